"""Best-of-n curves, RL curves judged by gold, and all-pairs gold matches: the data behind the
overoptimisation plot and the Elo table.

Best-of-n is the cheapest way to optimise against a reward model, and its KL from the sampling policy is
known in closed form, so plotting RM and gold score against that KL shows how far the RM can be pushed
before the gold score turns down (Stiennon et al. 2020, appendix G.3; Gao et al. 2022, section 2). RL's own
curve comes from its policy folder: PPO records the RM score and KL of each evaluation point and the answers
behind them, and :func:`rl_curve` adds their gold score here, so training never sees the judge.
"""

from __future__ import annotations

import itertools
import json
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
    """For each n, the mean RM and gold score of the RM's favourite among the first n samples per prompt,
    and ``oracle_gold_score``: the gold score of the gold judge's own favourite, what a perfect RM would pick
    from the same samples. The gap between the two gold columns is what a better RM could buy at that KL.

    Both arrays are (P, N) with N >= max(ns); ties go to the earlier sample, so every n reuses the same
    samples and the ``rm_score`` and ``oracle_gold_score`` columns can only grow with n.
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
                     "gold_score": float(gold[at, pick].mean()),
                     "oracle_gold_score": float(gold[:, :n].max(1).mean())})
    return rows


def judge_scores(judge: Any) -> Callable[[list[Any], list[str]], list[float]]:
    """``judge.score`` over lists of prompts and answers: the ``gold_fn`` that :func:`sample_and_score` and
    :func:`bon_curve` take."""
    return lambda prompts, texts: [judge.score(p, t) for p, t in zip(prompts, texts, strict=True)]


def sample_and_score(policy_path: str | Path, rm_path: str | Path, prompts: Sequence[Any], n: int,
                     gold_fn: Callable[[list[Any], list[str]], Sequence[float]], temperature: float, seed: int,
                     max_new_tokens: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``n`` answers per prompt sampled once (prompt-major, like the rollout), with their RM and gold scores:
    (texts, rm (P, n), gold (P, n))."""
    from tiller.models import load_policy
    from tiller.rollout import generate
    from tiller.scoring import RewardScorer

    model, tok = load_policy(policy_path, trainable=False)
    ro = generate(model, tok, list(prompts), n=n, temperature=temperature, seed=seed, max_new_tokens=max_new_tokens)
    texts = ro.texts
    del model
    flat = [p for p in prompts for _ in range(n)]
    rm = np.array(RewardScorer(str(rm_path)).score(flat, texts, ro.ended), dtype=float).reshape(len(prompts), n)
    gold = np.array([float(x) for x in gold_fn(flat, texts)], dtype=float).reshape(len(prompts), n)
    return texts, rm, gold


def bon_curve(policy_path: str | Path, rm_path: str | Path, prompts: Sequence[Any],
              gold_fn: Callable[[list[Any], list[str]], Sequence[float]],
              ns: Sequence[int] = (1, 2, 4, 8, 16), temperature: float = 1.0, seed: int = 0,
              max_new_tokens: int = 40) -> list[dict[str, float]]:
    """Sample max(ns) answers per prompt once, score all with the RM and ``gold_fn``, then :func:`best_of_n`.

    Returns rows ``{n, kl, rm_score, gold_score, oracle_gold_score}``; ``kl`` is the analytic best-of-n KL
    in nats.
    """
    _, rm, gold = sample_and_score(policy_path, rm_path, prompts, max(ns), gold_fn, temperature, seed, max_new_tokens)
    return best_of_n(rm, gold, ns)


def rl_curve(policy_dir: str | Path, judge: Any) -> list[dict[str, Any]]:
    """The points of ``policy_dir/curve.json`` (``{iteration, episodes, kl, rm_score}``), each with
    ``gold_score``: the mean ``judge.score`` of the answers of that point in ``curve-answers.jsonl`` (one line
    ``{iteration, prompts, answers}`` per point, written by ``tiller ppo``). A point without answers (a
    folder written before PPO kept them) keeps what it had."""
    from tiller.stages.ppo import ANSWERS_FILE

    folder = Path(policy_dir)
    points = json.loads((folder / "curve.json").read_text())
    said: dict[int, dict[str, Any]] = {}
    if (folder / ANSWERS_FILE).is_file():
        for line in (folder / ANSWERS_FILE).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                said[int(row["iteration"])] = row
    out = []
    for point in points:
        row = said.get(int(point["iteration"]))
        if row is not None:
            if not row["answers"] or len(row["answers"]) != len(row["prompts"]):
                raise ValueError(f"{folder / ANSWERS_FILE}: iteration {row['iteration']} has "
                                 f"{len(row['answers'])} answers for {len(row['prompts'])} prompts")
            scores = [judge.score(p, t) for p, t in zip(row["prompts"], row["answers"], strict=True)]
            point = {**point, "gold_score": sum(scores) / len(scores)}
        out.append(point)
    return out


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


def headroom(compare: Callable[[Any, str, str], float], prompts: Sequence[Any], candidates: Sequence[Sequence[str]],
             rm_scores: np.ndarray, gold_scores: np.ndarray, baseline: Sequence[str],
             ns: Sequence[int]) -> list[dict[str, Any]]:
    """Win rate against one ``baseline`` answer per prompt of the best of the first n ``candidates``, picked
    by the RM (``rm``) and by the gold judge (``gold``), each ``{rate, lo, hi}`` (ties half, 95% intervals).

    Separates the two things RLHF needs: the ``gold`` column is what a perfect RM would reach from these
    samples at best-of-n's KL, a rough ceiling for any policy that moves that far; the gap to ``rm`` is what
    the RM's errors cost. ``candidates[i]`` holds N answers to ``prompts[i]``; scores are (P, N).
    """
    from tiller.eval.evaluate import mean_ci

    rm, gold = np.asarray(rm_scores, dtype=float), np.asarray(gold_scores, dtype=float)
    shape = (len(prompts), len(candidates[0]) if candidates else 0)
    if rm.shape != shape or gold.shape != shape or len(baseline) != len(prompts):
        raise ValueError(f"need (prompts, samples) = {shape} scores and one baseline answer per prompt; got "
                         f"{rm.shape}, {gold.shape} and {len(baseline)} answers")
    if max(ns) > shape[1]:
        raise ValueError(f"n={max(ns)} needs {max(ns)} samples per prompt, have {shape[1]}")
    rows: list[dict[str, Any]] = []
    for n in sorted(ns):
        row: dict[str, Any] = {"n": n, "kl": bon_kl(n)}
        for name, s in (("rm", rm), ("gold", gold)):
            pick = s[:, :n].argmax(1)
            rate, lo, hi = mean_ci([float(compare(p, candidates[i][pick[i]], baseline[i]))
                                    for i, p in enumerate(prompts)])
            row[name] = {"rate": rate, "lo": lo, "hi": hi}
        rows.append(row)
    return rows


def policy_headroom(policy_path: str | Path, rm_path: str | Path, prompts: Sequence[Any], baseline: Sequence[str],
                    judge: Any, n: int = 4, temperature: float = 0.7, seed: int = 0,
                    max_new_tokens: int = 48) -> list[dict[str, Any]]:
    """Sample ``n`` answers per prompt from ``policy_path`` once, score them with the RM and the gold judge,
    then :func:`headroom` against ``baseline`` for n = 1, 2, 4, ... up to ``n``."""
    texts, rm, gold = sample_and_score(policy_path, rm_path, prompts, n, judge_scores(judge), temperature, seed,
                                       max_new_tokens)
    cands = [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
    ns = sorted({1 << k for k in range(n.bit_length()) if 1 << k <= n} | {n})
    return headroom(judge.compare, prompts, cands, rm, gold, baseline, ns)
