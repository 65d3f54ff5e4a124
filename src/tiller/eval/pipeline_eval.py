"""The end of ``tiller run``: every policy of the run judged on held-out prompts by the gold labeler.

Win rates answer the questions the report asks (did RLHF beat SFT and the base model? did ptx pay the
alignment tax back? did each round beat the one before?); Elo ranks every checkpoint from all pairwise judgements.
InstructGPT's metadata per policy and the win rates restricted to each aspect say what a win is made of.
"""

from __future__ import annotations

from pathlib import Path

from tiller.eval.evaluate import (
    PolicyAnswers,
    answer,
    aspect_win_rates,
    judge_all,
    judge_answers,
    policy_metadata,
    test_prompts,
    win_rates,
)
from tiller.eval.results import (
    CurvePoint,
    Estimate,
    Headroom,
    HeadroomRow,
    PolicyEval,
    RMRound,
    RunResults,
    Sample,
    Scores,
    WinRate,
)

COMPARISONS = [  # (name in the report, policy A, policy B)
    ("final vs sft", "final", "sft"),
    ("final vs base", "final", "base"),
    ("ppo-ptx vs sft", "ppo-ptx-r1", "sft"),
    ("ppo vs sft", "ppo-noptx-r1", "sft"),
    ("bon vs sft", "bon-r1", "sft"),
    ("ppo-ptx vs ppo", "ppo-ptx-r1", "ppo-noptx-r1"),
    ("ppo-ptx vs bon", "ppo-ptx-r1", "bon-r1"),
    ("dpo vs sft", "dpo-r1", "sft"),
    ("ppo-ptx vs dpo", "ppo-ptx-r1", "dpo-r1"),
    ("round 2 vs round 1", "ppo-ptx-r2", "ppo-ptx-r1"),
    ("round 3 vs round 2", "ppo-ptx-r3", "ppo-ptx-r2"),
]


def evaluate_run(cfg, rd: Path, world, policies: dict[str, str], rms: dict[str, tuple[Path, list[Path]]],
                 rm_metrics: dict[str, dict]) -> RunResults:
    """Judge the run: ``policies`` maps names to policy folders, ``rms`` round names (``r1``, ...) to the
    round's RM folder and the rankings it learned from, ``rm_metrics`` rounds to ``tiller rm``'s metrics.
    The pipeline adds the timings and training curves to what this returns."""
    from tiller.eval.curves import bon_curve, gold_matches, judge_scores, policy_headroom, rl_curve
    from tiller.eval.elo import elo_intervals, elo_ratings
    from tiller.eval.evaluate import corpus_loss
    from tiller.eval.rm_accuracy import rm_gold_accuracy

    es = cfg.eval
    judge = world.judge
    rm_results = {r: RMRound.from_dict({**rm_metrics.get(r, {}),
                                        "gold_accuracy": rm_gold_accuracy(judge, rm_dir, rankings, cfg.rm)})
                  for r, (rm_dir, rankings) in rms.items()}
    prompts, families = test_prompts(world, es.n_per_family, es.seed)
    answers: dict[str, PolicyAnswers] = {}
    by_path: dict[str, PolicyAnswers] = {}
    for name, path in policies.items():  # "final" is the same folder as the last round: answer once
        if path not in by_path:
            by_path[path] = answer(path, prompts, families, es.temperature, es.seed)
        answers[name] = by_path[path]
    judged = {name: judge_all(judge, ans) for name, ans in answers.items()}
    evals = {}
    corpus_valid = rd / "world/corpus-valid.jsonl"
    for name, ans in answers.items():
        per, overall, rows = judge_answers(judge, ans)
        overall["pretrain_loss"] = corpus_loss(policies[name], corpus_valid)
        meta = {k: {item: Estimate.from_dict(e) for item, e in v.items()} for k, v in policy_metadata(judged[name]).items()}
        evals[name] = PolicyEval(policies[name], {f: Scores.from_dict(s) for f, s in per.items()},
                                 Scores.from_dict(overall), [Sample.from_dict(r) for r in rows[:60]],
                                 metadata=meta["metadata"], aspect_means=meta["aspect_means"])
    compared = [(title, a, b) for title, a, b in COMPARISONS
                if a in answers and b in answers and policies[a] != policies[b]]
    wins = {title: {f: WinRate.from_dict(w) for f, w in win_rates(judge, answers[a], answers[b]).items()}
            for title, a, b in compared}
    aspect_wins = {title: {x: WinRate.from_dict(w) for x, w in aspect_win_rates(judged[a], judged[b]).items()}
                   for title, a, b in compared}
    distinct = {n: a for n, a in answers.items() if n != "final"}
    matches = gold_matches(judge, {n: a.texts for n, a in distinct.items()}, prompts)
    anchor = "sft" if "sft" in distinct else None
    elo = elo_ratings(matches, anchor=anchor)
    curves: dict[str, list[CurvePoint]] = {}  # RL's (RM score and KL from training, gold judged here), best-of-n
    for name, path in policies.items():
        if name != "final" and (Path(path) / "curve.json").is_file():
            curves[name] = [CurvePoint.from_dict(p) for p in rl_curve(path, judge)]
    if es.bon_curve and "r1" in rms:
        valid = [p["prompt"] for p in world.prompts if p["split"] == "valid"][:64]
        curves["bon"] = [CurvePoint.from_dict(p) for p in bon_curve(policies["sft"], str(rms["r1"][0]), valid,
                                                                      judge_scores(judge), seed=es.seed)]
    out = RunResults(run=rd.name, policies=dict(policies), evals=evals, win_rates=wins,
                     aspect_win_rates=aspect_wins, elo=elo,
                     elo_intervals=elo_intervals(matches, anchor=anchor), curves=curves, rm=rm_results)
    if es.headroom_n > 1 and rms and "sft" in answers:
        last_dir = rms[max(rms, key=lambda r: int(r[1:]))][0]
        rows = policy_headroom(policies["sft"], last_dir, prompts, answers["sft"].texts, judge, n=es.headroom_n,
                               temperature=es.temperature, seed=es.seed + 1)
        out.headroom = Headroom("sft", Path(last_dir).name, [HeadroomRow.from_dict(r) for r in rows])
    return out
