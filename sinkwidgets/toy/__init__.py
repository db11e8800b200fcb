from .task import AveragingTask, Batch, make_batch
from .model import TinyTransformer, ToyConfig
from .train import TrainResult, train, evaluate
