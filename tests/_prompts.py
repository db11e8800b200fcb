"""Prompts shared by the tests (ordinary English, as in recipes.md §2)."""

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
