"""Small labelled datasets for tag probes, generated here from tables written for this package.

- ``cities``: "The city of X is in Y." true/false, 64 cities × 2 templates × {true, false} = 256 statements,
  grouped by city (a held-out fold holds cities the probe never saw). SmolLM2-135M prefers the true completion in
  ~95% of cases, so the model knows these facts.
- ``sentiment``: template sentences with 12 positive and 12 negative adjectives, 240 sentences, grouped by
  adjective pair (each pair's two adjectives on the same templates; a held-out fold holds unseen adjectives).
- ``arithmetic``: "a + b = c." with single digits, true or false, 200 statements, grouped by ``(a, b)``. A
  **negative control**: SmolLM2-135M prefers the true sum only ~53% of the time, so a probe that "finds truth"
  here finds something else (surface form, magnitude of the digits).

Every dataset is balanced and deterministic (no randomness beyond a fixed seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._args import integer as check_integer
from .._args import seed as check_seed
from ..errors import SinkwidgetsValueError

# (city, country) pairs: well-known cities, one country each
CITIES: tuple[tuple[str, str], ...] = (
    ("Tokyo", "Japan"), ("Osaka", "Japan"), ("Kyoto", "Japan"), ("Paris", "France"), ("Lyon", "France"),
    ("Marseille", "France"), ("Berlin", "Germany"), ("Munich", "Germany"), ("Hamburg", "Germany"),
    ("Rome", "Italy"), ("Milan", "Italy"), ("Naples", "Italy"), ("Venice", "Italy"), ("Madrid", "Spain"),
    ("Barcelona", "Spain"), ("Seville", "Spain"), ("Lisbon", "Portugal"), ("Porto", "Portugal"),
    ("Moscow", "Russia"), ("Beijing", "China"), ("Shanghai", "China"), ("Delhi", "India"), ("Mumbai", "India"),
    ("Cairo", "Egypt"), ("Toronto", "Canada"), ("Vancouver", "Canada"), ("Montreal", "Canada"),
    ("Sydney", "Australia"), ("Melbourne", "Australia"), ("Chicago", "the United States"),
    ("Boston", "the United States"), ("Seattle", "the United States"), ("Stockholm", "Sweden"),
    ("Oslo", "Norway"), ("Copenhagen", "Denmark"), ("Helsinki", "Finland"), ("Warsaw", "Poland"),
    ("Vienna", "Austria"), ("Athens", "Greece"), ("Istanbul", "Turkey"), ("Dublin", "Ireland"),
    ("Amsterdam", "the Netherlands"), ("Brussels", "Belgium"), ("Zurich", "Switzerland"),
    ("Budapest", "Hungary"), ("Bangkok", "Thailand"), ("Seoul", "South Korea"), ("Jakarta", "Indonesia"),
    ("Hanoi", "Vietnam"), ("Lima", "Peru"), ("Bogota", "Colombia"), ("Santiago", "Chile"), ("Havana", "Cuba"),
    ("Nairobi", "Kenya"), ("Lagos", "Nigeria"), ("Johannesburg", "South Africa"), ("Tehran", "Iran"),
    ("Baghdad", "Iraq"), ("Karachi", "Pakistan"), ("Dhaka", "Bangladesh"), ("Buenos Aires", "Argentina"),
    ("Rio de Janeiro", "Brazil"), ("Mexico City", "Mexico"), ("Auckland", "New Zealand"),
)

CITY_TEMPLATES = ("The city of {city} is in {country}.", "{city} is a city in {country}.")

POSITIVE = ("wonderful", "excellent", "delightful", "great", "lovely", "fantastic", "superb", "charming",
            "brilliant", "pleasant", "amazing", "enjoyable")
NEGATIVE = ("terrible", "awful", "dreadful", "horrible", "boring", "disappointing", "miserable", "poor",
            "unpleasant", "dull", "bad", "painful")
NOUNS = ("movie", "meal", "concert", "hotel", "book", "trip", "service", "game", "show", "party")
SENTIMENT_TEMPLATES = ("The {noun} was {adj}.", "I thought the {noun} was {adj}.", "Honestly, the {noun} felt {adj}.",
                       "Everyone said the {noun} was {adj}.", "Our {noun} yesterday was {adj}.")


@dataclass(frozen=True)
class ProbeDataset:
    """Labelled texts for :func:`sinkwidgets.tags.probe`: ``labels`` 0/1, ``groups`` for grouped CV."""

    name: str
    texts: tuple[str, ...]
    labels: np.ndarray
    groups: tuple[str, ...]
    description: str
    negative_control: bool = False

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        n1 = int(np.sum(self.labels))
        neg = ", negative control" if self.negative_control else ""
        return (f"ProbeDataset({self.name!r}, {len(self)} texts, {n1} positive / {len(self) - n1} negative, "
                f"{len(set(self.groups))} groups{neg})")


def cities() -> ProbeDataset:
    """True/false city–country statements (256), grouped by city."""
    countries = sorted({c for _, c in CITIES})
    rng = np.random.default_rng(0)
    texts, labels, groups = [], [], []
    for city, country in CITIES:
        wrong = [c for c in countries if c != country]
        for template in CITY_TEMPLATES:
            false_country = wrong[int(rng.integers(len(wrong)))]
            for label, y in ((1, country), (0, false_country)):
                text = template.format(city=city, country=y)
                texts.append(text[0].upper() + text[1:])
                labels.append(label)
                groups.append(city)
    return ProbeDataset("cities", tuple(texts), np.asarray(labels, np.int64), tuple(groups),
                        "true (1) / false (0) statements 'The city of X is in Y.', grouped by city")


def sentiment() -> ProbeDataset:
    """Template sentiment sentences (240): positive (1) / negative (0), grouped by adjective pair."""
    texts, labels, groups = [], [], []
    pairs = [(t, n) for t in SENTIMENT_TEMPLATES for n in NOUNS]  # 50 (template, noun) pairs
    for k, (pos, neg) in enumerate(zip(POSITIVE, NEGATIVE)):
        for j in range(10):  # 10 sentences per adjective, each adjective pair on the same (template, noun) pairs
            template, noun = pairs[(7 * k + 5 * j) % len(pairs)]
            for label, adj in ((1, pos), (0, neg)):
                texts.append(template.format(noun=noun, adj=adj))
                labels.append(label)
                groups.append(f"{pos}/{neg}")
    return ProbeDataset("sentiment", tuple(texts), np.asarray(labels, np.int64), tuple(groups),
                        "positive (1) / negative (0) template sentences, grouped by adjective pair")


def arithmetic() -> ProbeDataset:
    """Single-digit sums 'a + b = c.' (200), true (1) / false (0), grouped by (a, b). A negative control."""
    rng = np.random.default_rng(1)
    texts, labels, groups = [], [], []
    for a in range(10):
        for b in range(10):
            s = a + b
            off = [o for o in (-3, -2, -1, 1, 2, 3) if s + o >= 0]
            wrong = s + off[int(rng.integers(len(off)))]
            for label, c in ((1, s), (0, wrong)):
                texts.append(f"{a} + {b} = {c}.")
                labels.append(label)
                groups.append(f"{a}+{b}")
    return ProbeDataset("arithmetic", tuple(texts), np.asarray(labels, np.int64), tuple(groups),
                        "single-digit sums, true (1) / false (0), grouped by (a, b); NEGATIVE CONTROL: SmolLM2-135M "
                        "does not know these sums (prefers the true one ~53% of the time)", negative_control=True)


DATASETS = {"cities": cities, "sentiment": sentiment, "arithmetic": arithmetic}


def load_dataset(name: str) -> ProbeDataset:
    """One of the shipped datasets by name: ``"cities"``, ``"sentiment"`` or ``"arithmetic"``."""
    if not isinstance(name, str) or name not in DATASETS:
        raise SinkwidgetsValueError(f"name={name!r}: unknown dataset; shipped datasets: {sorted(DATASETS)} "
                                    "(or pass your own texts and labels to sinkwidgets.tags.probe)")
    return DATASETS[name]()


# ----------------------------------------------------------------------------- multi-sentence paragraphs (catch)
SUBJECTS = ("The old farmer", "My sister", "A young doctor", "The tired driver", "Our neighbour", "The quiet student",
            "A small child", "The baker", "His grandfather", "The new teacher", "A careful pilot", "The lonely sailor")
VERBS = ("walked slowly to", "looked closely at", "drove past", "painted a picture of", "talked about", "cleaned",
         "visited", "waited near", "laughed at", "forgot about", "carried a box to", "dreamed of")
OBJECTS = ("the red barn", "the busy market", "an empty station", "the river bank", "the noisy kitchen",
           "a dusty library", "the tall tower", "the green garden", "a broken bridge", "the winter forest",
           "the morning train", "a crowded beach")
TAILS = ("before the rain started", "after a long day", "with a heavy heart", "in the early morning",
         "without saying a word", "while the dog slept", "for the second time", "under a grey sky")

#: Our transcription of the three sentences in the teaser figure of Zhang, Khan & Papyan's project page (one head
#: of an unnamed Llama-2-style model catches sentences 2 and 3 on the first sentence boundary). The figure shows
#: lowercase "i" after each boundary and unlabeled boundary tokens; we join the sentences with newlines.
TEASER = ("I laughed with friends until my stomach hurt.\ni wiped away tears of sadness and said nothing.\n"
          "i slammed my fist in anger on the table.")


def paragraphs(n: int = 40, seed: int = 0, sentences: int = 3, joiner: str = " ") -> list[str]:
    """``n`` paragraphs of ``sentences`` short sentences each ("The baker visited the red barn after a long day."),
    drawn from small word tables with ``numpy.random.default_rng(seed)``; deterministic, offline.

    Every sentence ends with ``'.'`` and sentences are joined by ``joiner`` (``" "`` or ``"\\n"``), so each
    paragraph has ``sentences - 1`` non-first sentence boundaries for :func:`sinkwidgets.tags.boundary_heads` and
    :func:`sinkwidgets.tags.catch` (pilot on SmolLM2-135M, 40 paragraphs: L1H1 is the top boundary head, α ≈ 0.43).
    """
    # ints or numpy ints >= 1 (a bool, float or string: ArgumentTypeError, both a TypeError and a ValueError)
    n = check_integer("n", n, minimum=1, example=40)
    sentences = check_integer("sentences", sentences, minimum=1, example=3)
    rng = np.random.default_rng(check_seed("seed", seed))
    out = []
    for _ in range(int(n)):
        out.append(joiner.join(
            f"{SUBJECTS[rng.integers(len(SUBJECTS))]} {VERBS[rng.integers(len(VERBS))]} "
            f"{OBJECTS[rng.integers(len(OBJECTS))]} {TAILS[rng.integers(len(TAILS))]}." for _ in range(int(sentences))))
    return out
