"""Regenerate the small saved traces in tutorials/traces/ with the package's own code (for classes with no compute).

    python tutorials/make_traces.py          # ~1 min on a laptop CPU; needs the offline models

Each file is a SinkTrace (``sw.SinkTrace.load(path)``; numpy only to read). Maps are kept for a few layers in float16
so that ``sw.SinkExplorer`` shows real attention maps; the whole folder stays under 2 MB.
"""

from __future__ import annotations

from pathlib import Path

import sinkwidgets as sw
from sinkwidgets.lessons import inputs

OUT = Path(__file__).with_name("traces")
LIGHTHOUSE = ("The old lighthouse keeper climbed the stairs every evening to light the lamp, watching the ships pass "
              "by in the dark. Scientists have discovered that honey bees can recognize human faces.")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    smol = sw.load_model("smollm2-135m")
    sw.trace(smol, LIGHTHOUSE, keep_maps=[3, 11, 18, 27]).save(OUT / "smollm2_lighthouse.npz")
    sw.trace(smol, inputs.repeated_text(smol, 64), keep_maps=[18]).save(OUT / "smollm2_repeated_the.npz")
    sw.trace(smol, inputs.random_text(smol, 64, seed=0), keep_maps=[18]).save(OUT / "smollm2_random_tokens.npz")
    minilm = sw.load_model("minilm-l6")
    sw.trace(minilm, "The lamp was lit every evening. [SEP] Ships passed by in the dark.",
             keep_maps="all").save(OUT / "minilm_two_segments.npz")
    total = sum(p.stat().st_size for p in OUT.glob("*.npz"))
    print(f"{len(list(OUT.glob('*.npz')))} traces, {total / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    main()
