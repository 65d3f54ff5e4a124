"""The end of ``tiller run``: every policy of the run judged on held-out prompts by the gold labeler.

Win rates answer the questions the report asks (did RLHF beat SFT and the base model? did ptx pay the
alignment tax back? did each round beat the one before?); Elo ranks every checkpoint from all pairwise judgements.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tiller.eval.evaluate import PolicyAnswers, answer, judge_answers, test_prompts, win_rates

COMPARISONS = [  # (name in the report, policy A, policy B)
    ("final vs sft", "final", "sft"),
    ("final vs base", "final", "base"),
    ("ppo-ptx vs sft", "ppo-ptx-r1", "sft"),
    ("ppo vs sft", "ppo-noptx-r1", "sft"),
    ("bon vs sft", "bon-r1", "sft"),
    ("ppo-ptx vs ppo", "ppo-ptx-r1", "ppo-noptx-r1"),
    ("ppo-ptx vs bon", "ppo-ptx-r1", "bon-r1"),
    ("round 2 vs round 1", "ppo-ptx-r2", "ppo-ptx-r1"),
    ("round 3 vs round 2", "ppo-ptx-r3", "ppo-ptx-r2"),
]


def evaluate_run(cfg, rd: Path, world, policies: dict[str, str], rm_results: dict, gold) -> dict[str, Any]:
    from tiller.eval.curves import bon_curve, gold_matches, policy_headroom
    from tiller.eval.elo import elo_intervals, elo_ratings
    from tiller.eval.evaluate import corpus_loss

    es = cfg.eval
    prompts, families = test_prompts(world, es.n_per_family, es.seed)
    answers: dict[str, PolicyAnswers] = {}
    by_path: dict[str, PolicyAnswers] = {}
    for name, path in policies.items():  # "final" is the same folder as the last round: answer once
        if path not in by_path:
            by_path[path] = answer(path, prompts, families, es.temperature, es.seed)
        answers[name] = by_path[path]
    evals = {}
    corpus_valid = rd / "world/corpus-valid.jsonl"
    for name, ans in answers.items():
        per, overall, rows = judge_answers(world.judge, ans)
        overall["pretrain_loss"] = corpus_loss(policies[name], corpus_valid)
        evals[name] = {"policy": policies[name], "per_family": per, "overall": overall, "samples": rows[:60]}
    wins = {title: win_rates(world.judge, answers[a], answers[b])
            for title, a, b in COMPARISONS if a in answers and b in answers and policies[a] != policies[b]}
    distinct = {n: a for n, a in answers.items() if n != "final"}
    matches = gold_matches(world.judge, {n: a.texts for n, a in distinct.items()}, prompts)
    anchor = "sft" if "sft" in distinct else None
    elo = elo_ratings(matches, anchor=anchor)
    curves: dict[str, Any] = {}
    for name, path in policies.items():
        f = Path(path) / "curve.json"
        if name != "final" and f.is_file():
            curves[name] = json.loads(f.read_text())
    if es.bon_curve and "r1" in rm_results:
        valid = [p["prompt"] for p in world.prompts if p["split"] == "valid"][:64]
        curves["bon"] = bon_curve(policies["sft"], str(rd / "rm-r1"), valid, gold, seed=es.seed)
    out = {"run": rd.name, "policies": policies, "evals": evals, "win_rates": wins, "elo": elo,
           "elo_intervals": elo_intervals(matches, anchor=anchor), "curves": curves, "rm": rm_results}
    if es.headroom_n > 1 and rm_results and "sft" in answers:
        last = f"rm-r{max(int(r[1:]) for r in rm_results)}"
        out["headroom"] = {"policy": "sft", "rm": last, "rows": policy_headroom(
            policies["sft"], rd / last, prompts, answers["sft"].texts, world.judge, n=es.headroom_n,
            temperature=es.temperature, seed=es.seed + 1)}
    return out
