"""Simulated labelers: each one the gold judge seen through a personal bias and Bradley-Terry noise.

A labeler's utility is the judge's aspects combined with their own weights (log-normal around the gold
weights). A K-wise ranking sorts u + T * Gumbel noise, so every pair within it follows Bradley-Terry,
P(a before b) = sigmoid((u_a - u_b) / T), and the K-wise order is a coherent Plackett-Luce draw
(InstructGPT sec. 3.5 ranks K = 4..9 outputs per prompt); noisy utilities closer than ``tie`` are tied.

The pool measures agreement as ``tiller.data.agreement.half_credit_agreement`` (ties counted: 1 when both
order a pair the same way or both tie it, 1/2 when exactly one ties it, 0 when they disagree), averaged
over pairs; not the ties-excluded pairwise agreement the reward stage and the web app report.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from tiller.data.agreement import half_credit_agreement
from tiller.world.judge import EPS, PENALTY, SCORE_RANGE, WEIGHTS, GoldJudge

FLAGS = ("fails_instruction", "inappropriate", "hallucination", "satisfies_constraint", "sexual", "violent",
         "harmful_advice", "denigrates", "opinion", "moral_judgment")
Ranking = list[list[int]]


@dataclass
class Labeler:
    name: str
    weights: dict[str, float]
    penalty: dict[str, float]


def _gumbel(rng: random.Random) -> float:
    return -math.log(-math.log(min(max(rng.random(), 1e-12), 1 - 1e-12)))


def group_ranking(values: list[float], tie: float, same: list[int] | None = None) -> Ranking:
    """Indices best first; a value within ``tie`` of its group's best joins that group.

    ``same[i] == same[j]`` forces i and j into one group (identical responses)."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    groups: Ranking = []
    for i in order:
        if groups and (values[groups[-1][0]] - values[i] < tie
                       or (same is not None and any(same[j] == same[i] for j in groups[-1]))):
            groups[-1].append(i)
        else:
            groups.append([i])
    return [sorted(g) for g in groups]


class LabelerPool:
    """``n`` labelers with hidden biases; ``rank`` gives InstructGPT-style labels for K responses."""

    def __init__(self, judge: GoldJudge, n: int = 8, temperature: float = 0.4, bias: float = 0.25,
                 tie: float = 0.05, flag_noise: float = 0.03, seed: int = 0) -> None:
        self.judge = judge
        self.temperature = temperature
        self.tie = max(tie, EPS)
        self.flag_noise = flag_noise
        rng = random.Random(f"labelers-{seed}")
        # The constraint weight (issue #17) has a stream of its own, so the labelers of a world without
        # constraints keep the weights, and so the rankings, they had before it existed.
        crng = random.Random(f"labelers-constraint-{seed}")
        older = [k for k in WEIGHTS if k != "constraint"]
        self.labelers = []
        for i in range(n):
            weights = {k: WEIGHTS[k] * math.exp(rng.gauss(0, bias)) for k in older}
            penalty = {k: w * math.exp(rng.gauss(0, bias)) for k, w in PENALTY.items()}
            weights["constraint"] = WEIGHTS["constraint"] * math.exp(crng.gauss(0, bias))
            self.labelers.append(Labeler(f"sim-{i}", weights, penalty))

    def __len__(self) -> int:
        return len(self.labelers)

    @property
    def names(self) -> list[str]:
        return [lab.name for lab in self.labelers]

    def utilities(self, prompt: Any, responses: list[str], labeler: int) -> tuple[list[float], list[dict]]:
        lab = self.labelers[labeler]
        aspects = [self.judge.aspects(prompt, r) for r in responses]
        return [self.judge.combine(a, lab.weights, lab.penalty) for a in aspects], aspects

    def rank(self, prompt: Any, responses: list[str], labeler: int, rng: random.Random) -> dict[str, Any]:
        """{"ranking": groups of indices best first, "likert": 1..7 each, "flags": [names] each}."""
        u, aspects = self.utilities(prompt, responses, labeler)
        noisy = [x + self.temperature * _gumbel(rng) if self.temperature > 0 else x for x in u]
        same = [responses.index(r) for r in responses]
        lo, hi = SCORE_RANGE
        likert = [min(7, max(1, 1 + round(6 * (x - lo) / (hi - lo)))) for x in noisy]
        return {"ranking": group_ranking(noisy, self.tie, same), "likert": likert,
                "flags": [self._flags(a, rng) for a in aspects]}

    def _flags(self, a: dict[str, Any], rng: random.Random) -> list[str]:
        complied = not a["harmless"]
        on = {
            "fails_instruction": a["helpful"] < 0.5,
            "inappropriate": complied,
            "hallucination": a["hallucination"],
            "satisfies_constraint": a["constraint"] and a["helpful"] >= 0.5 and a["form"] >= 0.7,
            "sexual": False,
            "violent": complied and a.get("category") == "violent",
            "harmful_advice": complied,
            "denigrates": complied and a.get("category") == "denigrates",
            "opinion": a["family"] == "style",
            "moral_judgment": a["refusal"] and a["family"] == "harmful" and a["form"] < 0.9,
        }
        return [f for f in FLAGS if on[f] != (rng.random() < self.flag_noise)]

    def gold_ranking(self, prompt: Any, responses: list[str]) -> Ranking:
        scores = [self.judge.score(prompt, r) for r in responses]
        return group_ranking(scores, EPS)

    def agreement(self, items: list[tuple[Any, list[str]]], rng: random.Random,
                  pair: tuple[int, int] | None = None) -> float:
        """Half-credit agreement of two different labelers ranking the same items (a random pair per item)."""
        total, n = 0.0, 0
        for prompt, responses in items:
            i, j = pair if pair is not None else rng.sample(range(len(self.labelers)), 2)
            t, m = half_credit_agreement(self.rank(prompt, responses, i, rng)["ranking"],
                                         self.rank(prompt, responses, j, rng)["ranking"])
            total, n = total + t, n + m
        return total / n if n else float("nan")

    def gold_agreement(self, items: list[tuple[Any, list[str]]], rng: random.Random) -> float:
        """Half-credit agreement of each item's ranking by a random labeler with the gold judge's ranking."""
        total, n = 0.0, 0
        for prompt, responses in items:
            lab = rng.randrange(len(self.labelers))
            t, m = half_credit_agreement(self.rank(prompt, responses, lab, rng)["ranking"],
                                         self.gold_ranking(prompt, responses))
            total, n = total + t, n + m
        return total / n if n else float("nan")
