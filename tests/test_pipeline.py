"""`tiller run` end to end on a tiny world: every stage runs, the report is written, and a rerun of the
same command finds everything done and gives the same numbers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tiller.config import load_config
from tiller.pipeline import RunConfig, run_pipeline

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

pytestmark = pytest.mark.slow


def test_tiny_loop_writes_a_report_and_resumes(tmp_path):
    cfg = load_config(RunConfig, CONFIGS / "tiny.yaml",
                      ["ppo.iterations=2", "later_round_iterations=2", "pretrain.max_tokens=40000",
                       "eval.bon_curve=false", "bon.n_prompts=12", "rule_rm_flags=[harmful_advice,violent]"])
    rd = tmp_path / "tiny"
    report = run_pipeline(cfg, rd)
    assert report == rd / "report" / "report.html" and report.stat().st_size > 2000
    metrics = json.loads((rd / "report" / "metrics.json").read_text())
    for key in ("win_rate/final_vs_sft", "win_rate/final_vs_base", "pretrain_loss/sft", "rm/r2/gold_accuracy",
                "metadata/follows_constraints/sft", "metadata/fails_instruction/final", "win_rate/final_vs_sft_ties",
                "win_rate/dpo_vs_sft", "win_rate/ppo-ptx_vs_dpo"):
        assert key in metrics, key  # InstructGPT's metadata per policy, and what a win rate is made of (#17)
    for folder in ("base", "sft", "rm-r1", "rm-r2", "rm-harmless-r1", "rm-harmless-r2", "policy-r1", "policy-r2",
                   "policy-noptx-r1", "bon-r1", "policy-dpo-r1"):
        assert (rd / folder / "tiller-manifest.json").is_file(), folder
    # RL's reward: the round's preference RM summed, its harmlessness rule RM as a penalty (Sparrow)
    for policy, r in (("policy-r1", 1), ("policy-noptx-r1", 1), ("policy-r2", 2)):
        rewards = json.loads((rd / policy / "tiller-manifest.json").read_text())["config"]["rewards"]
        assert [(x["path"], x["role"]) for x in rewards] == [(str(rd / f"rm-r{r}"), "sum"),
                                                             (str(rd / f"rm-harmless-r{r}"), "penalty")]
    # the RMs are ensembles of two; round 2 ranks 2 answers of the newest policy beside 2 of SFT
    assert all((rd / f"rm-r{r}" / "members" / "1" / "tiller-reward.json").is_file() for r in (1, 2))
    r2 = [json.loads(line) for line in (rd / "data" / "samples-r2.jsonl").read_text().splitlines()]
    assert {x["policy"] for x in r2} == {f"{rd / 'policy-r1'}:2+{rd / 'sft'}:2"}
    results = json.loads((rd / "report" / "results.json").read_text())
    assert results["policies"]["final"] == str(rd / "policy-r2")
    # best-of-4 SFT answers picked by the last round's RM and by the gold judge: the gold pick is never worse
    head = results["headroom"]
    assert head["rm"] == "rm-r2" and [r["n"] for r in head["rows"]] == [1, 2, 4]
    assert all(r["gold"]["rate"] >= r["rm"]["rate"] for r in head["rows"])
    assert set(results["training"]) == {"ppo-policy-r1", "ppo-policy-r2", "ppo-policy-noptx-r1"}
    # every stage is up to date: the rerun only evaluates again, and evaluation is seeded
    t = time.time()
    run_pipeline(cfg, rd)
    again = json.loads((rd / "report" / "metrics.json").read_text())
    assert again["win_rate/final_vs_sft"] == metrics["win_rate/final_vs_sft"]
    stages = json.loads((rd / "report" / "results.json").read_text())["stage_seconds"]
    assert stages["pretrain"] < 5 and stages["ppo-r1"] < 5, stages  # skipped, not redone
    assert time.time() - t < 600
