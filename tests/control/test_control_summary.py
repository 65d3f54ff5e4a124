"""``tiller control summary``: settings are the runs equal but for the seed, their finals' mean and spread over
seeds, and the ratio to the true-reward baseline of the same seed, all on hand-made run folders written in the
loop's own shape (``ControlLoop.finish``: ``curve.json`` and ``write_manifest``); no training."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from tiller.config import from_dict
from tiller.control.cli import app
from tiller.control.config import ControlConfig
from tiller.control.summary import (
    BAR,
    find_runs,
    group_runs,
    markdown,
    ratio,
    seed_band,
    summarise_runs,
    trailing_mean,
    write_summary,
)
from tiller.runs import write_manifest

SHORT = dict(env="HalfCheetah-v5", total_steps=1000, report_to=[])


def write_run(root: Path, name: str, final: float, *, seed: int, reward: str = "learned", std: float = 10.0,
              seconds: float = 120.0, curve: list[dict[str, Any]] | None = None, **overrides: Any) -> Path:
    """``root/name/control`` as ``ControlLoop.finish`` writes it: curve.json and the manifest with the config."""
    cfg = from_dict(ControlConfig, {**SHORT, "seed": seed, "reward": reward, **overrides})
    out = root / name / "control"
    out.mkdir(parents=True)
    labels = cfg.labels if reward == "learned" else 0
    metrics = {"eval/true_return": final, "eval/true_return_std": std, "eval/random_return": -300.0,
               "labels/used": labels, "labels/asked": labels, "steps": cfg.total_steps,
               "predictor/val_accuracy": 0.8 if reward == "learned" else None, "seconds": seconds, "starts": 1}
    rows = curve if curve is not None else [{"step": 0, "labels": labels, "asked": labels, "true_return": -300.0},
                                            {"step": 500, "labels": labels, "asked": labels},
                                            {"step": 1000, "labels": labels, "asked": labels, "true_return": final}]
    (out / "curve.json").write_text(json.dumps(
        {"env": cfg.env, "reward": cfg.reward, "curve": rows, "starts": [{"step": 0, "labels": labels}],
         "checkpoints": [], "eval": {"final": [final - std, final + std], "random": [-300.0]}, "metrics": metrics},
        indent=1))
    write_manifest(out, stage="control", fingerprint="f" * 16, config=cfg, seed=cfg.seed, metrics=metrics,
                   starts=[{"step": 0, "labels": labels}])
    return out


@pytest.fixture
def measured(tmp_path: Path) -> Path:
    """learned (700 labels) finals 100/200/300, true 200/200/150, l1400 160/120 (seeds 0-1), an unfinished run."""
    root = tmp_path / "measure"
    for s, (learned, true) in enumerate([(100, 200), (200, 200), (300, 150)]):
        write_run(root, f"learned-s{s}", learned, seed=s, seconds=60.0 * (s + 2))  # 2, 3, 4 minutes
        write_run(root, f"true-s{s}", true, seed=s, reward="true", checkpoint_every=500 * s)  # still one setting
    write_run(root, "l1400-s0", 160, seed=0, labels=1400)
    write_run(root, "l1400-s1", 120, seed=1, labels=1400)
    (root / "broken-s0" / "logs").mkdir(parents=True)  # killed before it finished
    (root / "times.txt").write_text("learned-s0 rc=0 seconds=120\n")
    (root / "learned-s0.log").write_text("log\n")
    return root


def _by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in summary["settings"]}


def test_groups_are_settings_equal_but_for_the_seed(measured):
    runs, skipped = find_runs(measured)
    assert skipped == ["broken-s0"]
    groups = group_runs(runs)
    assert [g["name"] for g in groups] == ["l1400", "learned", "true"]  # labels 700 vs 1400: two settings
    assert [[r["name"] for r in g["runs"]] for g in groups] == [
        ["l1400-s0", "l1400-s1"], ["learned-s0", "learned-s1", "learned-s2"], ["true-s0", "true-s1", "true-s2"]]
    assert "seed" not in groups[0]["config"] and groups[0]["config"]["labels"] == 1400


def test_same_stem_different_settings_are_told_apart(tmp_path):
    write_run(tmp_path, "a-s0", 1.0, seed=0)
    write_run(tmp_path, "a-s1", 1.0, seed=1, labels=1400)
    write_run(tmp_path, "b-s0", 1.0, seed=0, labels=1400, queries="uniform")
    write_run(tmp_path, "c-s1", 1.0, seed=1, labels=1400, queries="uniform")
    names = [g["name"] for g in group_runs(find_runs(tmp_path)[0])]
    assert names == ["a (labels=1400)", "a (labels=700)", "b+c"]


def test_a_run_older_than_a_config_key_is_a_seed_of_the_same_setting(tmp_path):
    """A manifest written before ``env_kwargs`` (and ``app.chunk``) existed ran with what are now their defaults:
    it is one setting with a newer run, not a second setting named apart by nothing."""
    old = write_run(tmp_path, "learned-s0", 1.0, seed=0)
    manifest = json.loads((old / "tiller-manifest.json").read_text())
    del manifest["config"]["env_kwargs"], manifest["config"]["app"]["chunk"]
    (old / "tiller-manifest.json").write_text(json.dumps(manifest))
    write_run(tmp_path, "learned-s1", 2.0, seed=1)
    write_run(tmp_path, "hop-s0", 3.0, seed=0, env_kwargs={"terminate_when_unhealthy": False})
    groups = group_runs(find_runs(tmp_path)[0])
    assert [(g["name"], [r["name"] for r in g["runs"]]) for g in groups] == [
        ("hop", ["hop-s0"]), ("learned", ["learned-s0", "learned-s1"])]


def test_numbers_and_ratios_worked_by_hand(measured):
    summary = summarise_runs(*find_runs(measured))
    s = _by_name(summary)
    learned, true, l1400 = s["learned"], s["true"], s["l1400"]
    assert [x["final"] for x in learned["seeds"]] == [100, 200, 300]
    assert learned["mean"] == 200 and learned["std"] == pytest.approx(100.0)  # sample std: sqrt(20000 / 2)
    assert (learned["min"], learned["max"], learned["n"]) == (100, 300, 3)
    assert learned["minutes"] == pytest.approx(3.0) and learned["labels"] == [700, 700]
    assert learned["steps"] == [1000, 1000]
    assert true["mean"] == pytest.approx(550 / 3)
    assert true["std"] == pytest.approx(math.sqrt((2 * (50 / 3) ** 2 + (100 / 3) ** 2) / 2))  # 28.87
    assert true["baseline_for"] == ["l1400", "learned"] and true["vs_true"] is None

    v = learned["vs_true"]
    assert v["baseline"] == "true"
    assert [(x["seed"], x["ratio"], x["reaches"]) for x in v["per_seed"]] == [
        (0, 0.5, False), (1, 1.0, True), (2, 2.0, True)]
    assert v["of_means"] == pytest.approx(200 / (550 / 3)) and v["of_means_reaches"] is True  # 1.0909
    w = l1400["vs_true"]  # seeds 0 and 1 only; its mean over its own two seeds against the baseline's three
    assert [(x["seed"], x["ratio"], x["reaches"]) for x in w["per_seed"]] == [(0, 0.8, True), (1, 0.6, False)]
    assert w["of_means"] == pytest.approx(140 / (550 / 3)) and w["of_means_reaches"] is False  # 0.764 < 0.8
    assert BAR == 0.8


def test_baseline_at_or_below_zero_gives_no_ratio(tmp_path):
    assert ratio(5.0, 0.0) is None and ratio(5.0, -1.0) is None and ratio(None, 2.0) is None
    assert ratio(3.0, 4.0) == 0.75
    write_run(tmp_path, "learned-s0", 50, seed=0)
    write_run(tmp_path, "learned-s1", 60, seed=1)
    write_run(tmp_path, "true-s0", -10, seed=0, reward="true")
    write_run(tmp_path, "true-s1", 40, seed=1, reward="true")
    summary = summarise_runs(*find_runs(tmp_path))
    v = _by_name(summary)["learned"]["vs_true"]
    assert [(x["ratio"], x["reaches"]) for x in v["per_seed"]] == [(None, None), (1.5, True)]
    assert v["of_means"] == pytest.approx(55 / 15)
    table = markdown(summary)
    assert "| s0 -; s1 1.50 ✓ | 3.67 ✓ (vs true) |" in table


def test_no_baseline_of_another_length(tmp_path):
    """A true-reward run of other total_steps is not the baseline; the table says there is none."""
    write_run(tmp_path, "learned-s0", 50, seed=0)
    write_run(tmp_path, "true-s0", 40, seed=0, reward="true", total_steps=2000)
    summary = summarise_runs(*find_runs(tmp_path))
    assert _by_name(summary)["learned"]["vs_true"] is None
    assert "no true-reward baseline" in markdown(summary)


def test_seed_band_interpolates_where_all_seeds_have_data():
    np.testing.assert_allclose(trailing_mean(np.array([1.0, 2.0, 3.0, 4.0]), 2), [1.0, 1.5, 2.5, 3.5])
    a = {"curve": [{"step": s, "true_return": float(s)} for s in (0, 10, 20)]}
    b = {"curve": [{"step": 5, "true_return": 10.0}, {"step": 15}, {"step": 25, "true_return": 10.0}]}
    steps, mean, low, high = seed_band([a, b], window=1)
    np.testing.assert_allclose(steps, [5, 10, 20])  # the union of steps with data in [5, 20]
    np.testing.assert_allclose(mean, [7.5, 10, 15])  # a: 5, 10, 20; b: 10 throughout
    np.testing.assert_allclose(low, [5, 10, 10])
    np.testing.assert_allclose(high, [10, 10, 20])
    assert seed_band([{"curve": [{"step": 0}]}]) is None


def test_cli_writes_the_three_files_and_prints_the_table(measured):
    result = CliRunner().invoke(app, ["summary", str(measured)])
    assert result.exit_code == 0, result.output
    out = measured / "summary"
    assert sorted(p.name for p in out.iterdir()) == [
        "summary-curves.png", "summary-finals.png", "summary.html", "summary.json", "summary.md"]
    assert f"summary: {out / 'summary.html'}" in result.output
    assert "skipped (no finished run): broken-s0" in result.output
    row = ("| learned | learned | HalfCheetah-v5 | 1000 | 700 | s0 100 ± 10; s1 200 ± 10; s2 300 ± 10 "
           "| 200 ± 100 [100, 300] (n=3) | s0 0.50 ✗; s1 1.00 ✓; s2 2.00 ✓ | 1.09 ✓ (vs true) | 3.0 |")
    assert row in result.output and row in (out / "summary.md").read_text()
    assert "| true | true | HalfCheetah-v5 | 1000 | - |" in result.output
    data = json.loads((out / "summary.json").read_text())
    assert data["skipped"] == ["broken-s0"] and data["bar"] == 0.8
    assert _by_name(data)["learned"]["vs_true"]["of_means"] == pytest.approx(1.0909, abs=1e-4)
    html = (out / "summary.html").read_text()
    assert "summary-curves.png" in html and "summary-finals.png" in html and "broken-s0" in html

    again = CliRunner().invoke(app, ["summary", str(measured)])  # its own output folder is not a skipped run
    assert again.exit_code == 0 and "skipped (no finished run): broken-s0\n" in again.output


def test_names_are_escaped_and_empty_folders_are_an_error(tmp_path):
    write_run(tmp_path / "m", "<b>x-s0", 10, seed=0)
    page, _, _ = write_summary(tmp_path / "m", tmp_path / "page")
    html = page.read_text()
    assert "&lt;b&gt;x" in html and "<b>x" not in html
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["summary", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no finished control run" in result.output
