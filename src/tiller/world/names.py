"""Syllable-based names for the fictional world.

A handful of onsets, vowels and codas keeps the character set (and so a ~1k BPE vocabulary) small, while
still giving hundreds of distinct, pronounceable names ("Mira Tolan", "Kest", "Olun").
"""

from __future__ import annotations

import random

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
CODAS = ("", "", "", "n", "r", "l", "s", "k", "m", "nd", "st")

# Real words a generated name must never equal (the judge parses names out of free text).
_BLOCKED = {"and", "the", "is", "in", "on", "to", "no", "so", "be", "do", "go", "me", "we", "he", "she",
            "bad", "sad", "man", "men", "den", "ten", "tin", "tan", "ban", "bun", "sun", "run", "gun", "fun",
            "pan", "pin", "pen", "bin", "ben", "kin", "son", "ton", "dam", "ram", "rim", "rod", "red", "mad",
            "lad", "lid", "led", "lot", "not", "nor", "far", "for", "bar", "tar", "car", "mar", "star",
            "stand", "stun", "still", "bell", "ball", "tall", "toll", "dull", "doll", "mill", "kill", "sell",
            "tell", "well", "fell", "fill", "pill", "poll", "roll", "dell", "told", "gold", "sold", "bold"}


def syllable(rng: random.Random, coda: bool = True) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + (rng.choice(CODAS) if coda else "")


def make_name(rng: random.Random, n_syllables: int) -> str:
    parts = [syllable(rng, coda=(i == n_syllables - 1)) for i in range(n_syllables)]
    return "".join(parts).capitalize()


class NameGen:
    """Draws names never drawn before, so a place is never also a surname (the judge relies on that)."""

    def __init__(self, rng: random.Random, blocked: set[str] | frozenset[str] = frozenset()) -> None:
        self.rng = rng
        self.used: set[str] = set()
        self.blocked = _BLOCKED | {w.lower() for w in blocked}

    def new(self, syllables: tuple[int, ...] = (1, 2)) -> str:
        for _ in range(10_000):
            name = make_name(self.rng, self.rng.choice(syllables))
            if len(name) >= 3 and name.lower() not in self.blocked and name not in self.used:
                self.used.add(name)
                return name
        raise RuntimeError("ran out of names; lower the world's sizes")

    def many(self, n: int, syllables: tuple[int, ...] = (1, 2)) -> list[str]:
        return [self.new(syllables) for _ in range(n)]
