import json
import math
import re

from tiller.eval.report import elo_rows, headline_metrics, report_cmd, write_report
from tiller.eval.results import (
    CalibrationBin,
    CurvePoint,
    Estimate,
    Headroom,
    HeadroomRow,
    JudgeResults,
    PolicyEval,
    RMRound,
    RunResults,
    Sample,
    Scores,
    WinRate,
)

# results.json as tiller.pipeline writes it: every section, keys the records do not name included
PIPELINE = {
    "run": "demo",
    "policies": {"sft": "runs/demo/sft", "ppo-ptx-r1": "runs/demo/policy-r1", "final": "runs/demo/policy-r1"},
    "evals": {"sft": {"policy": "runs/demo/sft",
                      "per_family": {"harmful": {"score": 1.0, "correct": 0.5, "refusal_rate": 0.25}},
                      "overall": {"score": 1.5, "correct": 0.5, "refusal_rate": 0.25, "hallucination_rate": 0.1,
                                  "pretrain_loss": 2.2},
                      "samples": [{"family": "facts", "prompt": [{"role": "user", "content": "Who?"}],
                                   "response": "Mira.", "score": 2.0}]}},
    "win_rates": {"final vs sft": {"overall": {"rate": 0.6, "lo": 0.5, "hi": 0.7, "n": 40, "ties": 0.05}}},
    "elo": {"sft": 1000.0, "ppo-ptx-r1": 1100.0},
    "elo_intervals": {"sft": [1000.0, 1000.0], "ppo-ptx-r1": [1050.0, 1150.0]},
    "curves": {"ppo-ptx-r1": [{"iteration": 0, "kl": 0.0, "rm_score": 0.1, "episodes": 0, "gold_score": 1.5}],
               "bon": [{"n": 2, "kl": 0.193, "rm_score": 0.2, "gold_score": 1.6, "oracle_gold_score": 1.7}]},
    "rm": {"r1": {"eval/accuracy": 0.7, "eval/loss": 0.6, "eval/pairs": 120, "data/labeler_agreement": 0.72,
                  "calibration": [{"bin": "0.5-0.6", "n": 30, "predicted": 0.55, "observed": 0.6}],
                  "gold_accuracy": 0.8}},
    "headroom": {"policy": "sft", "rm": "rm-r1", "rows": [
        {"n": 4, "kl": 0.636, "rm": {"rate": 0.55, "lo": 0.5, "hi": 0.6}, "gold": {"rate": 0.7, "lo": 0.65, "hi": 0.75}}]},
    "stage_seconds": {"sft": 60.0, "eval": 30.0},
    "seconds_total": 95.0,
    "training": {"ppo-policy-r1": [{"stage": "ppo-policy-r1", "step": 1, "time": 12.5, "objective/kl": 0.1}]},
}


def test_pipeline_json_keeps_its_shape():
    results = RunResults.from_dict(PIPELINE)
    assert results.to_dict() == PIPELINE
    assert results.evals["sft"].overall.refusal_rate == 0.25 and results.rm["r1"].extra["eval/pairs"] == 120
    assert results.curves["ppo-ptx-r1"][0].iteration == 0 and results.elo_intervals["ppo-ptx-r1"] == (1050.0, 1150.0)


def test_round_trip():
    x = RunResults(
        run="r", created="2025-01-01", final="ppo-r2", policies={"sft": "a", "ppo-r2": "b"},
        evals={"sft": PolicyEval("a", {"facts": Scores(score=1.0, hallucination_rate=0.5)},
                                 Scores(1.0, 0.5, 0.1, 0.5, 2.3, extra={"new_aspect": 0.2}),
                                 [Sample("facts", "Who?", "Her.", 1.5), Sample("style", None, "", None)])},
        win_rates={"ppo-r2 vs sft": {"overall": WinRate(0.6, 0.5, 0.7, 10, 0.1), "facts": WinRate(rate=0.4)}},
        elo={"sft": 1000.0, "ppo-r2": 1042.5}, elo_intervals={"ppo-r2": (1000.0, 1090.0)},
        curves={"ppo-r2": [CurvePoint(kl=0.1, rm_score=0.2, iteration=3, episodes=96, extra={"note": "x"})]},
        rm={"r1": RMRound(0.7, 0.8, None, [CalibrationBin("0.5-0.6", 3, 0.55, 0.5)], extra={"eval/loss": 0.6}),
            "r2": RMRound(accuracy=0.75)},
        headroom=Headroom("sft", "rm-r2", [HeadroomRow(2, 0.19, WinRate(0.5), WinRate(0.6, 0.55, 0.65))]),
        stage_seconds={"sft": 1.5}, seconds_total=2.0, training={"ppo": [{"step": 1, "loss/policy": -0.1}]},
    )
    assert RunResults.from_dict(x.to_dict()) == x
    assert RunResults.from_dict(json.loads(json.dumps(x.to_dict()))) == x  # through results.json
    assert RunResults.from_dict(RunResults().to_dict()) == RunResults()


def test_from_dict_tolerates_missing_and_malformed_parts():
    assert RunResults.from_dict({}) == RunResults() and RunResults.from_dict("junk") == RunResults()
    bad = RunResults.from_dict({
        "evals": {"sft": "oops", "a": {"overall": {"score": "high", "correct": True}, "samples": ["x", {}]}},
        "win_rates": {"c": "x"}, "curves": {"bon": "x"}, "rm": {"r1": {"calibration": "oops"}},
        "headroom": {"rows": [{"n": 2, "rm": "bad"}, "junk"]}, "stage_seconds": {"a": "1", "b": 2},
        "training": {"t": [{"step": 1}, 3]}, "seconds_total": float("nan")})
    assert bad.evals["sft"] == PolicyEval() and bad.evals["a"].overall.score is None
    assert bad.evals["a"].overall.correct is None and bad.evals["a"].samples == [Sample()]  # a bool is no number
    assert bad.win_rates == {"c": {}} and bad.curves == {"bon": []} and bad.rm["r1"].calibration == []
    assert bad.headroom == Headroom(rows=[HeadroomRow(n=2)])
    assert bad.stage_seconds == {"b": 2.0} and bad.training == {"t": [{"step": 1}]}
    assert math.isnan(bad.seconds_total)  # NaN is kept as written; the report shows it as missing
    # older files gave the interval inside each rating; elo_intervals wins where both are there
    old = RunResults.from_dict({"elo": {"a": {"rating": 1000, "lo": 990, "hi": 1010}, "b": {"rating": 900, "lo": 1},
                                        "c": {"rating": None}, "d": 950},
                                "elo_intervals": {"d": [940.0, 960.0], "a": "bad"}})
    assert old.elo == {"a": 1000.0, "b": 900.0, "d": 950.0}
    assert old.elo_intervals == {"a": (990.0, 1010.0), "d": (940.0, 960.0)}
    assert elo_rows(old) == [("a", 1000.0, 990.0, 1010.0), ("b", 900.0, None, None), ("d", 950.0, 940.0, 960.0)]


# an old results.json: written before headroom, RL curves with gold scores, RM gold accuracy and the training
# rows existed, with Elo ratings as {rating, lo, hi}
OLD = {
    "run": "old<run>",
    "policies": {"sft": "runs/old/sft", "ppo-r1": "runs/old/policy-r1"},
    "evals": {"sft": {"overall": {"score": 1.2, "correct": 0.4}, "per_family": {"facts": {"score": 1.0}}},
              "ppo-r1": {"overall": {"score": 1.6, "refusal_rate": 0.5}}},
    "win_rates": {"final vs sft": {"overall": {"rate": 0.58, "lo": 0.5, "hi": 0.66, "n": 60}}},
    "elo": {"sft": {"rating": 1000.0, "lo": 1000.0, "hi": 1000.0}, "ppo-r1": {"rating": 1080.0, "lo": 1020.0, "hi": 1140.0}},
    "rm": {"r1": {"eval/accuracy": 0.69}},
}


def test_old_sparse_results_still_render(tmp_path, monkeypatch):
    html = write_report(RunResults.from_dict(OLD), tmp_path).read_text()
    assert "<h1>tiller report: old&lt;run&gt;</h1>" in html and "final policy: ppo-r1" in html
    assert "Judged by: the embedded world&#x27;s gold judge</p>" in html  # the only judge before issue #14
    assert "58.0%" in html and "[50.0%, 66.0%]" in html and "n=60" in html
    assert "<tr><td>ppo-r1</td><td class=\"n\">1.600</td>" in html and "1080" in html
    assert "<h2>Reward models</h2>" in html and "69.0%" in html
    for missing in ("Headroom", "<h2>Optimisation</h2>", "<h2>Stage timings</h2>", "<h2>Sample answers</h2>"):
        assert missing not in html, missing
    assert sorted(re.findall(r'<img src="([^"]*)"', html)) == ["elo.png", "family_scores.png", "winrates.png"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == headline_metrics(RunResults.from_dict(OLD), "ppo-r1")
    assert metrics["elo/final"] == 1080.0 and metrics["win_rate/final_vs_sft"] == 0.58
    assert metrics["rm/r1/accuracy"] == 0.69 and metrics["refusal_rate/final"] == 0.5

    # `tiller report` re-renders such a file where it lies
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "runs" / "old" / "report"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(OLD))
    assert report_cmd("old").resolve() == folder / "report.html"
    assert (folder / "report.html").read_text() == html


# an evaluation as tiller.pipeline writes it since issue #17: InstructGPT's metadata per policy, the shares of
# wins / ties / losses, the constraint buckets and the win rates restricted to each aspect
METADATA_RUN = {
    "policies": {"sft": "runs/demo/sft", "ppo-ptx-r1": "runs/demo/policy-r1"},
    "evals": {"sft": {"policy": "runs/demo/sft", "per_family": {}, "overall": {"score": 1.5}, "samples": [],
                      "metadata": {"follows_constraints": {"value": 0.75, "lo": 0.3006, "hi": 0.9544, "n": 4},
                                   "harmful": {"value": 0.0, "lo": 0.0, "hi": 0.4345, "n": 5}},
                      "aspect_means": {"likert": {"value": 4.6, "lo": 3.27, "hi": 5.93, "n": 5}}}},
    "win_rates": {"ppo-ptx vs sft": {
        "with constraint": {"rate": 0.5, "lo": 0.0, "hi": 1.0, "n": 2, "ties": 0.0, "wins": 0.5, "losses": 0.5},
        "overall": {"rate": 0.625, "lo": 0.16, "hi": 1.0, "n": 4, "ties": 0.25, "wins": 0.5, "losses": 0.25}}},
    "aspect_win_rates": {"ppo-ptx vs sft": {
        "constraint": {"rate": 0.75, "lo": 0.26, "hi": 1.0, "n": 2, "ties": 0.5, "wins": 0.5, "losses": 0.0}}},
    "elo": {}, "elo_intervals": {}, "curves": {}, "rm": {}, "stage_seconds": {}, "training": {},
}


def test_metadata_and_aspect_win_rates_round_trip():
    results = RunResults.from_dict(METADATA_RUN)
    assert results.to_dict() == METADATA_RUN
    sft = results.evals["sft"]
    assert sft.metadata["follows_constraints"] == Estimate(0.75, 0.3006, 0.9544, 4)
    assert sft.aspect_means["likert"].value == 4.6
    assert results.win_rates["ppo-ptx vs sft"]["overall"] == WinRate(0.625, 0.16, 1.0, 4, 0.25, 0.5, 0.25)
    assert results.aspect_win_rates["ppo-ptx vs sft"]["constraint"].ties == 0.5
    assert RunResults.from_dict(json.loads(json.dumps(results.to_dict()))) == results


def test_results_from_before_the_metadata_still_load():
    """A results.json written before issue #17 has no metadata, no wins or losses and no aspect win rates: they
    read as empty (or None) and are left out again when it is written back."""
    old = RunResults.from_dict(PIPELINE)
    assert old.evals["sft"].metadata == {} and old.evals["sft"].aspect_means == {}
    assert old.aspect_win_rates == {}
    ov = old.win_rates["final vs sft"]["overall"]
    assert (ov.wins, ov.losses, ov.ties) == (None, None, 0.05)
    assert "aspect_win_rates" not in old.to_dict() and "metadata" not in old.to_dict()["evals"]["sft"]
    bad = RunResults.from_dict({"evals": {"a": {"metadata": "junk", "aspect_means": {"x": 3}}},
                                "aspect_win_rates": {"c": "x"}})
    assert bad.evals["a"].metadata == {} and bad.evals["a"].aspect_means == {"x": Estimate()}
    assert bad.aspect_win_rates == {"c": {}}


# -- issue #14: who judged, AI judges, people, RM scores --------------------------------------------------------

SPEC = "openai:http://127.0.0.1:8000/v1"


def test_judges_people_and_rm_scores_round_trip():
    from tiller.eval.human import HumanEval

    human = HumanEval.from_dict({"batch": "proj-eval", "baseline": "sft", "policies": ["final", "sft"], "n_items": 4,
                                 "n_labels": 8, "labelers": ["ana", "ben"],
                                 "win_rates": {"final": {"rate": 1.0, "lo": 1.0, "hi": 1.0, "n": 8, "ties": 0.0}},
                                 "likert": {"final": {"value": 6.0, "lo": 6.0, "hi": 6.0, "n": 8}},
                                 "elo": {"sft": 1000.0, "final": 1300.0}, "elo_intervals": {"final": [1200.0, 1400.0]}})
    x = RunResults(
        run="proj", judged_by=["app", SPEC], rm_scored_by="rm-r1", policies={"sft": "s", "final": "p"},
        evals={"sft": PolicyEval("s", samples=[Sample("all", [{"role": "user", "content": "Hi"}], "Hello.", None, 0.25)],
                                 rm_score=Estimate(0.1, -0.1, 0.3, 6))},
        judges={SPEC: JudgeResults(f"{SPEC}:m", "t.j2", 4, 16, 1, 8, 1, ["maybe"], 0.5,
                                   {"final vs sft": {"overall": WinRate(0.5, 0.2, 0.8, 7, 0.1, 0.45, 0.45, 1)}},
                                   {"sft": 1000.0, "final": 1010.0}, {"final": (990.0, 1030.0)})},
        human=human)
    d = x.to_dict()
    assert RunResults.from_dict(d) == x and RunResults.from_dict(json.loads(json.dumps(d))) == x
    assert d["judged_by"] == ["app", SPEC] and d["rm_scored_by"] == "rm-r1" and d["human"] == human.to_dict()
    assert d["evals"]["sft"]["rm_score"] == {"value": 0.1, "lo": -0.1, "hi": 0.3, "n": 6}
    assert d["evals"]["sft"]["samples"] == [{"family": "all", "prompt": [{"role": "user", "content": "Hi"}],
                                             "response": "Hello.", "rm_score": 0.25}]  # no gold score: left out
    assert d["judges"][SPEC] == {
        "judge": f"{SPEC}:m", "template": "t.j2", "n_prompts": 4, "n_asked": 16, "n_parse_failures": 1, "n_pairs": 8,
        "n_pairs_left_out": 1, "failure_examples": ["maybe"], "max_failure_share": 0.5,
        "win_rates": {"final vs sft": {"overall": {"rate": 0.5, "lo": 0.2, "hi": 0.8, "n": 7, "ties": 0.1,
                                                   "wins": 0.45, "losses": 0.45, "left_out": 1}}},
        "elo": {"sft": 1000.0, "final": 1010.0}, "elo_intervals": {"final": [990.0, 1030.0]}}


def test_results_from_before_other_judges_still_load():
    """A results.json written before issue #14 names no judge, no AI judge, no people and no RM scores: they read
    as empty and are left out again when it is written back (PIPELINE's round trip above is exact)."""
    old = RunResults.from_dict(PIPELINE)
    assert (old.judged_by, old.judges, old.human, old.rm_scored_by) == ([], {}, None, None)
    assert old.evals["sft"].rm_score is None and old.evals["sft"].samples[0].rm_score is None
    assert old.win_rates["final vs sft"]["overall"].left_out is None
    assert not {"judged_by", "judges", "human", "rm_scored_by"} & set(old.to_dict())
    old = RunResults.from_dict(OLD)
    assert old.judged_by == [] and old.judges == {} and old.human is None
    bad = RunResults.from_dict({"judged_by": "world", "judges": "junk", "human": "junk", "rm_scored_by": 3,
                                "evals": {"a": {"rm_score": 3, "samples": [{"rm_score": "high"}]}}})
    assert (bad.judged_by, bad.judges, bad.human, bad.rm_scored_by) == ([], {}, None, None)
    assert bad.evals["a"].rm_score is None and bad.evals["a"].samples == [Sample()]
    bad = RunResults.from_dict({"judged_by": ["world", 3], "judges": {SPEC: {"failure_examples": "oops", "n_asked": "3",
                                                                            "win_rates": {"c": "x"}, "elo": {"a": "b"}}},
                                "human": {"baseline": "sft", "win_rates": "x"}})
    assert bad.judged_by == ["world"] and bad.judges == {SPEC: JudgeResults(win_rates={"c": {}})}
    assert bad.human is not None and bad.human.baseline == "sft" and bad.human.win_rates == {}
