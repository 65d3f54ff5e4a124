"""Best-of-n curves and all-pairs gold matches: the data behind the overoptimisation plot and the Elo table.

Best-of-n is the cheapest way to optimise against a reward model, and its KL from the sampling policy is
known in closed form, so plotting RM and gold score against that KL shows how far the RM can be pushed
before the gold score turns down (Stiennon et al. 2020, appendix G.3; Gao et al. 2022, section 2).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiller.eval.elo import Match


def bon_kl(n: int) -> float:
    """KL(best-of-n || policy) in nats: log n - (n - 1) / n (exact when the samples' scores are distinct)."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n(rm_scores: np.ndarray, gold_scores: np.ndarray, ns: Sequence[int]) -> list[dict[str, float]]:
    """For each n, the mean RM and gold score of the RM's favourite among the first n samples per prompt.

    Both arrays are (P, N) with N >= max(ns); ties in RM score go to the earlier sample, so every n
    reuses the same samples and the ``rm_score`` column can only grow with n.
    """
    rm, gold = np.asarray(rm_scores, dtype=float), np.asarray(gold_scores, dtype=float)
    if rm.shape != gold.shape or rm.ndim != 2:
        raise ValueError(f"rm and gold scores must both be (prompts, samples); got {rm.shape} and {gold.shape}")
    if max(ns) > rm.shape[1]:
        raise ValueError(f"n={max(ns)} needs {max(ns)} samples per prompt, have {rm.shape[1]}")
    rows = []
    for n in sorted(ns):
        pick = rm[:, :n].argmax(1)  # (P,) first index of the maximum
        at = np.arange(rm.shape[0])
        rows.append({"n": n, "kl": bon_kl(n), "rm_score": float(rm[at, pick].mean()),
                     "gold_score": float(gold[at, pick].mean())})
    return rows


def bon_curve(policy_path: str | Path, rm_path: str | Path, prompts: Sequence[Any],
              gold_fn: Callable[[list[Any], list[str]], Sequence[float]],
              ns: Sequence[int] = (1, 2, 4, 8, 16), temperature: float = 1.0, seed: int = 0,
              max_new_tokens: int = 40) -> list[dict[str, float]]:
    """Sample max(ns) answers per prompt once, score all with the RM and ``gold_fn``, then :func:`best_of_n`.

    Returns rows ``{n, kl, rm_score, gold_score}``; ``kl`` is the analytic best-of-n KL in nats.
    """
    from tiller.models import load_policy
    from tiller.rollout import generate
    from tiller.scoring import RewardScorer

    n_max = max(ns)
    model, tok = load_policy(policy_path)
    texts = generate(model, tok, list(prompts), n=n_max, temperature=temperature, seed=seed,
                     max_new_tokens=max_new_tokens).texts
    del model
    flat = [p for p in prompts for _ in range(n_max)]  # prompt-major, like the rollout
    rm = np.array(RewardScorer(str(rm_path)).score(flat, texts), dtype=float).reshape(len(prompts), n_max)
    gold = np.array([float(x) for x in gold_fn(flat, texts)], dtype=float).reshape(len(prompts), n_max)
    return best_of_n(rm, gold, ns)


def gold_matches(judge: Any, answers: Mapping[str, Sequence[str]], prompts: Sequence[Any]) -> list[Match]:
    """Every pair of policies compared on every prompt by ``judge.compare``: (a, b, 1 if a's answer is better).

    ``answers[name][i]`` answers ``prompts[i]``; pairs are taken in the order of ``answers``.
    """
    for name, texts in answers.items():
        if len(texts) != len(prompts):
            raise ValueError(f"policy {name!r} has {len(texts)} answers for {len(prompts)} prompts")
    matches: list[Match] = []
    for a, b in itertools.combinations(list(answers), 2):
        for i, p in enumerate(prompts):
            matches.append((a, b, float(judge.compare(p, answers[a][i], answers[b][i]))))
    return matches
