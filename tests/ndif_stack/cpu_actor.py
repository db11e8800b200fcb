"""A CPU model actor for the self-hosted NDIF stack (ndif 0.1.2), test code only.

ndif's stock ``ModelActor`` calls ``torch.cuda`` when it loads, caches and cleans up a model, which fails on a
CPU-only torch ("Torch not compiled with CUDA enabled"). ndif lets a deployment name its actor class
(``NDIF_MODEL_IMPORT_PATH`` / the deploy spec's ``actor_class``); this one is imported by the Ray workers as
``cpu_actor.CPUModelActor`` (the fixture puts this folder on their ``PYTHONPATH``).

Only the CUDA-bound steps are replaced; ndif's own request handling (deserialize, execute, respond, inline result
or S3 upload) runs unchanged:

- ``load_from_disk``: nnsight's ``HuggingFaceModel.from_model_key(key, dispatch=True, device="cpu")`` in the
  deployment's dtype, gradients off;
- ``to_cache`` / ``from_cache``: the weights already live in host memory, so parking a replica only cancels its
  running job and flips ``cached``;
- ``cleanup``: clears the kill switch and the interleaver after each request, without ``torch.cuda.empty_cache``.

This module runs inside the stack's venv (ray, ndif), never in the test process.
"""

from __future__ import annotations

import gc
import logging
import time

import ray
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment
from nnsight.modeling.huggingface import HuggingFaceModel

log = logging.getLogger("ndif.modeling")


class CPUDeployment(BaseModelDeployment):
    """``BaseModelDeployment`` with host-memory loading and no CUDA calls."""

    CACHEABLE = False

    def load_from_disk(self) -> HuggingFaceModel:
        t0 = time.perf_counter()
        model = HuggingFaceModel.from_model_key(self.model_key, dispatch=True, device="cpu", dtype=self.dtype_name,
                                                **self.kwargs)
        model._module.requires_grad_(False)
        log.info("[sinkwidgets cpu actor] loaded %s in %.2f s", self.model_key, time.perf_counter() - t0)
        return model

    async def to_cache(self) -> None:
        await self.cancel("preempted")
        self.cached = True

    def from_cache(self, gpu_mem_bytes_by_id) -> None:
        self.gpu_mem_bytes_by_id = gpu_mem_bytes_by_id
        self.cached = False

    def cleanup(self) -> None:
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()
        gc.collect()


@ray.remote(num_cpus=1, max_restarts=-1)
class CPUModelActor(CPUDeployment):
    """The Ray actor ndif places for each deployed model (``actor_class="cpu_actor.CPUModelActor"``)."""
