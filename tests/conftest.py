"""Shared fixtures: the offline models are fetched once (download + convert) and cached per user."""

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from _prompts import ENGLISH, LONG_TEXT  # noqa: F401  (re-exported for fixtures)


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
