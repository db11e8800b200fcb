"""Shared fixtures: the offline models are fetched once (download + convert) and cached per user."""

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

LONG_TEXT = (
    "The old lighthouse keeper climbed the stairs every evening to light the lamp. Ships passed by in the dark, "
    "and he watched them go. Scientists have discovered that honey bees can recognize human faces by learning "
    "patterns of features. My favourite recipe for bread uses flour, water, salt and a little yeast, and it needs "
    "a whole day to rise. In 1969, astronauts landed on the Moon for the first time, and millions of people "
    "watched on television."
)
ENGLISH = [
    "The old lighthouse keeper climbed the stairs every evening to light the lamp, watching the ships pass by in the dark.",
    "Scientists have discovered that honey bees can recognize human faces by learning patterns of features.",
    "My favourite recipe for bread uses flour, water, salt and a little yeast, and it needs a whole day to rise.",
    "In 1969, astronauts landed on the Moon for the first time, and millions of people watched on television.",
]


@pytest.fixture(scope="session")
def smollm2():
    import sinkwidgets as sw

    return sw.load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    import sinkwidgets as sw

    return sw.load_model("gemma3-270m")


@pytest.fixture(scope="session")
def minilm():
    import sinkwidgets as sw

    return sw.load_model("minilm-l6")
