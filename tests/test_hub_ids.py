"""Hub ids with a dot (``Qwen/Qwen3-0.6B``) are hub ids, locally and with ``remote=True``; paths stay paths."""

import pytest

from sinkwidgets.models.registry import looks_like_hub_id


@pytest.mark.unit
@pytest.mark.parametrize("name", ["Qwen/Qwen3-0.6B", "meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-0.5B",
                                  "HuggingFaceTB/SmolLM2-135M", "gpt2/gpt2", "a/b.c.d"])
def test_dotted_owner_name_is_a_hub_id(name):
    assert looks_like_hub_id(name)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["./models/x", "/abs/path", "~/m", "a/b/c", "a\\b", "no-slash", "a/../b", "a/",
                                  "/Qwen3-0.6B", "a b/c"])
def test_paths_and_junk_are_not_hub_ids(name):
    assert not looks_like_hub_id(name)


class _Reached(Exception):
    pass


@pytest.fixture
def record_hub(monkeypatch):
    """Replace transformers' hub entry points: record what reaches them, then stop."""
    import transformers

    seen = []

    def fake(target, *a, **k):
        seen.append(str(target))
        raise _Reached(str(target))

    for cls in (transformers.AutoConfig, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", fake)
    import sinkwidgets.models.hub as hub

    monkeypatch.setattr(hub, "check_hub", lambda repo_id, *a, **k: seen.append(f"probe:{repo_id}") and False)
    return seen


@pytest.mark.unit
@pytest.mark.parametrize("hub_id", ["Qwen/Qwen3-0.6B", "meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-0.5B"])
def test_load_model_sends_dotted_ids_to_the_hub(record_hub, hub_id, tmp_path, monkeypatch):
    import sinkwidgets as sw

    monkeypatch.chdir(tmp_path)  # no such local folder
    with pytest.raises(_Reached):
        sw.load_model(hub_id)
    assert record_hub == [f"probe:{hub_id}", hub_id]


@pytest.mark.unit
@pytest.mark.parametrize("hub_id", ["Qwen/Qwen3-0.6B", "meta-llama/Llama-3.1-8B"])
def test_remote_load_sends_dotted_ids_to_the_hub(record_hub, hub_id, tmp_path, monkeypatch):
    import sinkwidgets as sw

    monkeypatch.chdir(tmp_path)
    with pytest.raises(_Reached):
        sw.load_model(hub_id, remote=True)
    assert record_hub and record_hub[0] == hub_id


@pytest.mark.unit
def test_missing_local_paths_stay_path_errors(record_hub, tmp_path):
    import sinkwidgets as sw
    from sinkwidgets.errors import ModelNotFoundError

    for bad in (str(tmp_path / "nothing.here"), "./models/missing", str(tmp_path / "a" / "b")):
        with pytest.raises(ModelNotFoundError, match="no model directory"):
            sw.load_model(bad)
    assert record_hub == []


@pytest.mark.unit
def test_an_existing_folder_named_like_a_hub_id_is_local(tmp_path, monkeypatch, record_hub):
    import sinkwidgets as sw
    from sinkwidgets.errors import ModelNotFoundError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "Qwen" / "Qwen3-0.6B").mkdir(parents=True)
    with pytest.raises(ModelNotFoundError, match="config.json"):
        sw.load_model("Qwen/Qwen3-0.6B")
    assert record_hub == []
