"""Shipped texts for the catch tutorials: sinkwidgets.tags.paragraphs and TEASER (numpy only)."""

from __future__ import annotations

import pytest

from sinkwidgets import tags
from sinkwidgets.tags.analysis import is_boundary

pytestmark = pytest.mark.unit


def test_paragraphs_are_deterministic_and_have_the_asked_sentences():
    a = tags.paragraphs(12, seed=3)
    assert a == tags.paragraphs(12, seed=3) and a != tags.paragraphs(12, seed=4)
    assert len(a) == 12 and len(set(a)) == 12
    for p in a:
        assert p.count(".") == 3 and p.endswith(".") and "\n" not in p
    nl = tags.paragraphs(5, seed=3, sentences=4, joiner="\n")
    assert all(p.count("\n") == 3 and p.count(".") == 4 for p in nl)
    # the same word draws whatever the joiner
    assert [p.replace("\n", " ") for p in tags.paragraphs(5, seed=3, joiner="\n")] == tags.paragraphs(5, seed=3)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_paragraphs_reject_bad_counts(bad):
    with pytest.raises(ValueError):
        tags.paragraphs(bad)
    with pytest.raises(ValueError):
        tags.paragraphs(2, sentences=bad)


def test_teaser_has_three_sentences_and_newline_boundaries():
    lines = tags.TEASER.split("\n")
    assert len(lines) == 3 and all(line.endswith(".") for line in lines)
    assert lines[0].startswith("I laughed") and lines[1].startswith("i wiped") and lines[2].startswith("i slammed")
    assert is_boundary(".\n") and is_boundary("\n")
