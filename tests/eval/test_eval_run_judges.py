"""`tiller run`'s evaluation by other judges than the embedded world's (issue #14).

By hand: which prompts and comparisons the AI and app judges see, and an AI judge's verdicts aggregated into
win rates, counts and Elo. Then ``evaluate_run`` on a real tiny project run folder (no world: real SFT, RM and
PPO stages on tiny models) judged by real ``tiller serve`` apps, and by people in the real app (a scripted
labeler through the app's services), down to the report.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_eval_report import check_png

from helpers import first_token_judge, served_model
from tiller.config import ConfigError
from tiller.eval.evaluate import answer
from tiller.eval.human import KEY_FILE
from tiller.eval.pipeline_eval import (
    alias_free,
    by_comparison,
    comparisons,
    evaluate_run,
    judge_results,
    judged_subset,
)
from tiller.eval.report import headline_metrics, write_report
from tiller.eval.results import RunResults, WinRate
from tiller.judges import JudgeError, JudgeReport, PairVerdict, prompt_text

# -- by hand -------------------------------------------------------------------------------------------------

POLICIES = {"base": "run/base", "sft": "run/sft", "ppo-ptx-r1": "run/policy-r1", "final": "run/policy-r1"}


def test_judged_subset_takes_the_families_in_turn():
    fams = ["arithmetic"] * 3 + ["facts"] * 2 + ["style"]
    assert judged_subset(fams, 4) == [0, 1, 3, 5]  # arithmetic, facts, style, then arithmetic again
    assert judged_subset(fams, 100) == list(range(6))
    assert judged_subset(["all"] * 5, 3) == [0, 1, 2]  # a project's prompts: the first n


def test_comparisons_that_exist_and_the_first_of_compare_against_the_baseline():
    answers: dict[str, Any] = dict.fromkeys(POLICIES)
    got = comparisons(POLICIES, answers, "final", "sft")
    assert got == [("final vs sft", "final", "sft"), ("final vs base", "final", "base"),
                   ("ppo-ptx vs sft", "ppo-ptx-r1", "sft")]  # nothing added: final vs sft is there
    assert comparisons(POLICIES, answers, "sft", "base")[-1] == ("sft vs base", "sft", "base")
    assert comparisons(POLICIES, answers, "ppo-ptx-r1", "final") == got  # the same folder: no comparison
    assert comparisons(POLICIES, answers, "base", "final") == got  # final vs base compares those folders
    assert alias_free("final", POLICIES) == "ppo-ptx-r1" and alias_free("sft", POLICIES) == "sft"


def report_of(name: str, verdicts: list[tuple[str | None, str | None]]) -> JudgeReport:
    """A JudgeReport of pairs judged in both orders; a None verdict is the reply "maybe" (not a verdict)."""
    from tiller.judges import combine

    r = JudgeReport(name)
    for first, second in verdicts:
        r.add(PairVerdict(combine(first, second), (first, second), (first or "maybe", second or "maybe")))
    return r


def test_an_ai_judges_verdicts_by_hand():
    """final (policy-r1) against sft: asked in that order; against base: asked the other way round (base as
    x), so its outcomes are turned round. ppo-ptx vs sft compares the same folders as final vs sft."""
    judge = "openai:http://127.0.0.1:1/v1:j"
    reports = {("run/policy-r1", "run/sft"): report_of(judge, [("A", "B"), ("A", "A"), ("A", None), ("B", "A")]),
               ("run/base", "run/policy-r1"): report_of(judge, [("A", "B"), ("tie", "tie"), ("B", "A"), ("B", "A")])}
    compared = comparisons(POLICIES, dict.fromkeys(POLICIES), "final", "sft")
    by_title = by_comparison(compared, POLICIES, reports)
    # for final: win, position bias (tie), unparsable, loss; against base (base's outcomes 1, .5, 0, 0 turned)
    assert by_title == {"final vs sft": [1.0, 0.5, None, 0.0], "final vs base": [0.0, 0.5, 1.0, 1.0],
                        "ppo-ptx vs sft": [1.0, 0.5, None, 0.0]}
    res = judge_results(judge, "t.j2", reports, by_title, compared, ["all"] * 4, [False] * 4, False, POLICIES, 0.5)
    assert (res.judge, res.template, res.n_prompts, res.n_asked, res.n_parse_failures, res.n_pairs,
            res.n_pairs_left_out) == (judge, "t.j2", 4, 16, 1, 8, 1)
    assert res.failure_examples == ["maybe"] and res.max_failure_share == 0.5
    # final vs sft: outcomes 1, 0.5, 0 over n=3 (one left out): mean 0.5, sd 0.5, half-width
    # 1.96 * 0.5 / sqrt(3) = 0.565803: the interval is clipped to [0, 1]
    assert res.win_rates["final vs sft"] == {"overall": WinRate(0.5, 0.0, 1.0, 3, 1 / 3, 1 / 3, 1 / 3, 1)}
    # final vs base: 0, 0.5, 1, 1 -> 0.625, sd sqrt(0.6875 / 3) = 0.478714, half-width 0.469140
    w = res.win_rates["final vs base"]["overall"]
    assert (w.rate, w.hi, w.n, w.wins, w.ties, w.losses, w.left_out) == (0.625, 1.0, 4, 0.5, 0.25, 0.25, 0)
    assert w.lo == pytest.approx(0.155860, abs=1e-6)
    # Elo from each folder pair once, final under its round's name, sft at 1000: ppo-ptx-r1 won 1.5 of 3 against
    # sft (equal strength), 2.5 of 4 against base: base about 400 log10(2.5 / 1.5) = 88.7 points lower (the fit's
    # small prior pulls a little towards equal)
    assert set(res.elo) == {"sft", "ppo-ptx-r1", "base"} and res.elo["sft"] == 1000.0
    assert res.elo["ppo-ptx-r1"] == pytest.approx(1000.0, abs=2.0)
    assert res.elo["base"] == pytest.approx(1000.0 - 88.7, abs=4.0)
    # per-family buckets only where asked for (the embedded world's prompts)
    fams = ["facts", "facts", "style", "style"]
    res = judge_results(judge, None, reports, by_title, compared, fams, [True, False, False, True], True, POLICIES, 0.5)
    assert list(res.win_rates["final vs base"]) == ["facts", "style", "with constraint", "without constraint",
                                                    "overall"]
    # facts: 1 and 0.5 -> 0.75, sd 0.353553, half-width 1.96 * 0.353553 / sqrt(2) = 0.49; style: one loss, one left out
    assert res.win_rates["final vs sft"]["facts"] == WinRate(0.75, pytest.approx(0.26), 1.0, 2, 0.5, 0.5, 0.0, 0)
    assert res.win_rates["final vs sft"]["style"] == WinRate(0.0, 0.0, 0.0, 1, 0.0, 0.0, 1.0, 1)
    assert RunResults.from_dict(RunResults(judges={"x": res}).to_dict()).judges["x"] == res


# -- a real tiny project run ----------------------------------------------------------------------------------


# The project's held-out prompts; their first tokens steer the judge below (the AI judge sees the first 4)
HELD_OUT = ["+ What is 17 + 25?", "+ Where was Mira Tolan born?", "? Sort these numbers: 5, 2, 9.",
            "+ Name a colour.", "? Say hello.", "+ Who is Tam Ruvo?"]


@pytest.fixture(scope="module")
def project_run(tmp_path_factory, tiny_world_dir, tiny_base_dir) -> dict[str, Any]:
    """A project run folder as `tiller run` leaves it before evaluation: the user's base model (outside the
    run), SFT, one round of sampling, labels, RM and PPO-ptx, with no ``world/`` in it. The tiny world only
    lends its files (demonstrations, prompts, its simulated labelers); evaluation never sees it."""
    from tiller.labelers import LabelConfig, label
    from tiller.stages.ppo import PPOConfig, train_ppo
    from tiller.stages.reward import RMConfig, train_rm
    from tiller.stages.sample import SampleConfig, sample
    from tiller.stages.sft import SFTConfig, sft

    rd = tmp_path_factory.mktemp("runs") / "proj"
    logs, data = rd / "logs", rd / "data"
    prompts = tiny_world_dir / "prompts.jsonl"
    sft(SFTConfig(epochs=1, batch_size=16, report_to=[]), str(tiny_base_dir), tiny_world_dir / "demos.jsonl",
        rd / "sft", logs)
    sample(SampleConfig(k=4, n_prompts=40), str(rd / "sft"), prompts, data / "samples-r1.jsonl")
    label(LabelConfig(labeler="world", world=str(tiny_world_dir)), data / "samples-r1.jsonl", data / "rankings-r1.jsonl")
    rm_metrics = {"r1": train_rm(RMConfig(epochs=2, lr=1e-3, report_to=[], allow_empty=True), str(rd / "sft"),
                                 [data / "rankings-r1.jsonl"], tiny_world_dir / "demos.jsonl", rd / "rm-r1", logs)}
    train_ppo(PPOConfig(iterations=2, rollout_batch=8, minibatch_size=8, ppo_epochs=1, eval_every=1, eval_prompts=4,
                        lr=1e-3, report_to=[]), str(rd / "sft"), str(rd / "sft"), prompts, rd / "policy-r1", logs,
              rm_path=str(rd / "rm-r1"))
    return {"rd": rd, "prompts": [[{"role": "user", "content": c}] for c in HELD_OUT], "rm_metrics": rm_metrics,
            "rms": {"r1": (rd / "rm-r1", [data / "rankings-r1.jsonl"])},
            "policies": {"base": str(tiny_base_dir), "sft": str(rd / "sft"), "ppo-ptx-r1": str(rd / "policy-r1"),
                         "final": str(rd / "policy-r1")}}


@pytest.fixture(scope="module")
def judge(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A live `tiller serve` app over a hand-wired judge that answers by the first token of its question: "A"
    after "+", "????????" (not a verdict) after "?". With a template that starts with the prompt, the project's
    prompts decide: each "+" prompt is a tie (A in both orders), each "?" prompt a pair left out. It records
    the questions it is asked."""
    with served_model(first_token_judge(tmp_path_factory.mktemp("judge")), "tiny-judge") as (url, engine):
        asked: list[str] = []
        stream = engine.stream

        def recording(messages, *args, **kwargs):  # observes, then serves
            asked.append(messages[-1]["content"])
            return stream(messages, *args, **kwargs)

        engine.stream = recording  # type: ignore[method-assign]  # the app looks it up per request
        template = tmp_path_factory.mktemp("template") / "first.j2"
        template.write_text("{{ prompt }}\n\n[A] {{ answer_a }}\n[B] {{ answer_b }}\nA, B or tie?")
        yield {"url": url, "asked": asked, "template": template}


def run_config(**eval_settings: Any) -> Any:
    from tiller.pipeline import RunConfig

    cfg = RunConfig()
    return replace(cfg, eval=replace(cfg.eval, **eval_settings))


def test_a_project_run_judged_by_an_ai_judge(project_run, judge, tmp_path):
    from tiller.scoring import RewardScorer

    rd, prompts, policies = project_run["rd"], project_run["prompts"], project_run["policies"]
    spec = f"openai:{judge['url']}"
    cfg = run_config(judges=[spec], n_prompts=4, judge_template=str(judge["template"]))
    with pytest.raises(ConfigError, match="world is the embedded world's gold judge; a project run has none"):
        evaluate_run(run_config(judges=["world", spec]), rd, None, policies, {}, {}, prompts=prompts)
    with pytest.raises(ConfigError, match="held-out test prompts: none given"):
        evaluate_run(cfg, rd, None, policies, {}, {})
    judge["asked"].clear()
    res = evaluate_run(cfg, rd, None, policies, project_run["rms"], project_run["rm_metrics"], prompts=prompts)

    # no gold judge: none of its parts, and nothing empty in their place
    assert res.judged_by == [spec] and res.win_rates == {} and res.aspect_win_rates == {} and res.elo == {}
    assert res.headroom is None and set(res.curves) == {"ppo-ptx-r1"}  # RL's own curve, no best-of-n
    points = json.loads((rd / "policy-r1" / "curve.json").read_text())
    assert [(p.iteration, p.kl, p.rm_score, p.gold_score) for p in res.curves["ppo-ptx-r1"]] == \
        [(p["iteration"], p["kl"], p["rm_score"], None) for p in points]
    r1 = res.rm["r1"]
    assert r1.accuracy == project_run["rm_metrics"]["r1"]["eval/accuracy"] and r1.gold_accuracy is None
    assert res.rm_scored_by == "rm-r1"
    # per policy: its answers to all 6 prompts and the RM's mean score with a 95% normal interval
    scorer = RewardScorer(str(rd / "rm-r1"))
    for name, ev in res.evals.items():
        assert ev.policy == policies[name] and ev.per_family == {} and ev.metadata == {}
        assert ev.overall.score is None and ev.overall.pretrain_loss is None  # no world/corpus-valid.jsonl
        assert [s.prompt for s in ev.samples] == prompts and {s.family for s in ev.samples} == {"all"}
        scores = scorer.score(prompts, [s.response for s in ev.samples])
        assert [s.rm_score for s in ev.samples] == pytest.approx(scores, abs=1e-6)
        mean, half = statistics.mean(scores), 1.96 * statistics.stdev(scores) / math.sqrt(6)
        assert (ev.rm_score.value, ev.rm_score.lo, ev.rm_score.hi) == pytest.approx((mean, mean - half, mean + half))
        assert ev.rm_score.n == 6
    assert res.evals["final"].samples == res.evals["ppo-ptx-r1"].samples  # one folder, answered once

    # the AI judge on final vs sft, final vs base and ppo-ptx vs sft (final's folder again: not asked twice), on
    # the first 4 prompts: "+" prompts are ties (A in both orders), the "?" one is left out (2 replies "????????")
    j = res.judges[spec]
    assert j.judge == f"openai:{judge['url']}:tiny-judge" and j.template == str(judge["template"])
    assert (j.n_prompts, j.n_asked, j.n_parse_failures, j.n_pairs, j.n_pairs_left_out) == (4, 16, 4, 8, 2)
    assert j.failure_examples == ["????????"] * 4
    assert j.win_rates == {c: {"overall": WinRate(0.5, 0.5, 0.5, 3, 1.0, 0.0, 0.0, 1)}
                           for c in ("final vs sft", "final vs base", "ppo-ptx vs sft")}
    assert j.elo == pytest.approx({"sft": 1000.0, "ppo-ptx-r1": 1000.0, "base": 1000.0})
    texts = [prompt_text(p) for p in prompts]
    assert len(judge["asked"]) == 16  # 2 folder pairs x 4 prompts x both orders: nothing asked twice
    assert sorted(q.split("\n")[0] for q in judge["asked"]) == sorted(texts[:4] * 4)  # never the last two

    # results.json and back, then the report
    again = RunResults.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again == res
    html = write_report(again, tmp_path).read_text()
    assert f"Judged by: an AI judge (openai:{judge['url']}, model tiny-judge)" in html
    for gold in ("Win rates (gold judge)", "gold score", "gold accuracy", "gold win rate", "metadata", "Headroom"):
        assert gold not in html, gold  # no gold section, column or card
    assert f"<h2>AI judge: openai:{judge['url']}:tiny-judge</h2>" in html
    assert "ppo-ptx-r1 vs SFT: AI judge win rate" in html and "<li><code>????????</code></li>" in html
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["win_rate/ai/final_vs_sft"] == 0.5 and metrics["judge/ai/parse_failures"] == 4
    assert metrics["rm_score/final"] == res.evals["final"].rm_score.value
    assert metrics == headline_metrics(again, "ppo-ptx-r1")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["calibration.png", "overoptimisation.png",
                                                               "winrates-ai.png"]
    check_png(tmp_path / "overoptimisation.png", (5, 3.8))  # the RM panel alone: no gold scores to draw
    check_png(tmp_path / "winrates-ai.png", (7, None))


def test_a_judge_answering_nonsense_stops_the_evaluation(project_run, judge, tmp_path):
    template = tmp_path / "nonsense.j2"
    template.write_text("? {{ prompt }} {{ answer_a }} {{ answer_b }}")  # the judge answers "????????"
    cfg = run_config(judges=[f"openai:{judge['url']}"], n_prompts=4, judge_template=str(template))
    with pytest.raises(JudgeError, match=rf"the judge at {judge['url']} answered nonsense for 6 of 6 questions \(of 8 "
                                         r"planned; more than 50%\), e\.g\. '\?{8}'"):
        evaluate_run(cfg, project_run["rd"], None, project_run["policies"], {}, {}, prompts=project_run["prompts"])


def label_everything(db_url: str, batch: str, key_path: Path) -> int:
    """Ana and ben rank every assignment of ``batch`` through the app's own services: final's answer first, the
    others tied; Likert 6 for final, 3 for the rest. The key (the test's oracle, never the app's) tells which
    answer is whose. Returns the number of rankings."""
    from sqlalchemy import select

    from tiller.feedback.db import make_engine, session_factory
    from tiller.feedback.models import User
    from tiller.feedback.schemas import RankingCreate
    from tiller.feedback.services.batches import next_assignment
    from tiller.feedback.services.labels import submit_label

    key = json.loads(key_path.read_text())["items"]
    engine = make_engine(db_url)
    n = 0
    try:
        with session_factory(engine)() as s:
            for name in ("ana", "ben"):
                user = s.scalar(select(User).where(User.name == name))
                while (a := next_assignment(s, user, batch)) is not None:
                    at = key[a.item.external_id]
                    best = at.index("final")
                    body = RankingCreate(ranking=[[best], [i for i in range(len(at)) if i != best]],
                                         likert=[6 if p == "final" else 3 for p in at])
                    submit_label(s, user, a.id, body, uuid.uuid4().hex)
                    n += 1
    finally:
        engine.dispose()
    return n


def test_a_project_run_judged_by_people(project_run, db, tmp_path):  # noqa: F811  (db: the fixture)
    """People rank final, sft and base (ppo-ptx-r1 is final's folder: not shown twice) on the first 4 prompts;
    the run waits (here it times out, as a killed run would stop), then resumes on the same batch."""
    url, _ = db
    rd = project_run["rd"]
    cfg = run_config(judges=["app"], compare=["final", "ppo-ptx-r1", "sft", "base"], baseline="sft", n_prompts=4,
                     app_overlap=2)
    cfg = replace(cfg, label=replace(cfg.label, db=url, poll_s=0.02, timeout_s=0.3))
    run = (cfg, rd, None, project_run["policies"], project_run["rms"], project_run["rm_metrics"])
    with pytest.raises(TimeoutError, match="8 pending"):
        evaluate_run(*run, prompts=project_run["prompts"])
    key = json.loads((rd / "report" / KEY_FILE).read_text())
    assert key["batch"] == "proj-eval" and key["policies"] == ["final", "sft", "base"] and len(key["items"]) == 4
    # each item holds the right policies' answers to the first 4 prompts
    from tiller.eval.evaluate import PolicyAnswers

    es = cfg.eval
    prompts = project_run["prompts"]  # answered all at once, as evaluate_run does (the batch shapes the sampling)
    own: dict[str, PolicyAnswers] = {n: answer(project_run["policies"][n], prompts, ["all"] * len(prompts),
                                               es.temperature, es.seed) for n in ("final", "sft", "base")}
    from sqlalchemy import select

    from tiller.feedback.db import make_engine, session_factory
    from tiller.feedback.models import Item

    engine = make_engine(url)
    with session_factory(engine)() as s:
        for i, item in enumerate(s.scalars(select(Item).order_by(Item.position))):
            assert [own[p].texts[i] for p in key["items"][item.external_id]] == item.responses
    engine.dispose()
    assert label_everything(url, "proj-eval", rd / "report" / KEY_FILE) == 8

    res = evaluate_run(*run, prompts=project_run["prompts"])  # resumes: the batch is done
    h = res.human
    assert h is not None and res.judges == {} and res.judged_by == ["app"]
    assert (h.batch, h.baseline, h.policies, h.n_items, h.n_labels, h.labelers) == \
        ("proj-eval", "sft", ["final", "sft", "base"], 4, 8, ["ana", "ben"])
    assert h.win_rates["final"] == WinRate(1.0, 1.0, 1.0, 8, 0.0, 1.0, 0.0)  # always preferred
    assert h.win_rates["base"] == WinRate(0.5, 0.5, 0.5, 8, 1.0, 0.0, 0.0)  # always tied with sft

    assert RunResults.from_dict(json.loads(json.dumps(res.to_dict()))) == res
    html = write_report(res, tmp_path).read_text()
    assert "Judged by: people in tiller app (2 labelers, 8 rankings)" in html
    assert "<h2>Human evaluation</h2>" in html and "ppo-ptx-r1 vs sft: people&#x27;s win rate" in html
    assert re.search(r"<div class=\"value\">100.0%</div>", html)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["win_rate/human/final_vs_sft"] == 1.0 and metrics["win_rate/human/base_vs_sft"] == 0.5
    assert (tmp_path / "human-win-rates.png").is_file()


def test_a_world_run_judged_by_gold_and_an_ai_judge(project_run, judge, tiny_world_dir, tmp_path):
    """The same policies on the embedded world's held-out prompts: the gold judge as before, and beside it the AI
    judge (a template that starts with "+": "A" in both orders, every pair a tie) per family and bucket."""
    from tiller.world import load_world

    rd = tmp_path / "world-run"
    rd.mkdir()
    (rd / "world").symlink_to(tiny_world_dir)  # the world's corpus: the pretraining loss is measured
    template = tmp_path / "plus.j2"
    template.write_text("+ {{ prompt }}\n[A] {{ answer_a }}\n[B] {{ answer_b }}")
    spec = f"openai:{judge['url']}"
    cfg = run_config(judges=["world", spec], n_per_family=2, n_prompts=6, judge_template=str(template),
                     bon_curve=False, headroom_n=0)
    res = evaluate_run(cfg, rd, load_world(tiny_world_dir), project_run["policies"], project_run["rms"],
                       project_run["rm_metrics"], prompts=project_run["prompts"])  # the world's own prompts win
    families = sorted({s.family for s in res.evals["sft"].samples})
    assert len(families) >= 3 and len(res.evals["sft"].samples) == 2 * len(families)
    # the gold judge's parts, as before issue #14
    assert list(res.win_rates) == ["final vs sft", "final vs base", "ppo-ptx vs sft"]
    assert set(res.win_rates["final vs sft"]) == {*families, "without constraint", "overall"}
    assert set(res.elo) == {"base", "sft", "ppo-ptx-r1"} and res.rm["r1"].gold_accuracy is not None
    assert all(p.gold_score is not None for p in res.curves["ppo-ptx-r1"])
    for ev in res.evals.values():
        assert set(ev.per_family) == set(families) and ev.metadata and ev.overall.score is not None
        assert ev.overall.pretrain_loss is not None and ev.rm_score is not None and ev.rm_score.n == len(ev.samples)
        assert all(s.score is not None and s.rm_score is not None for s in ev.samples)
    # the AI judge on 6 prompts taken in turn from the families, per family and bucket
    j = res.judges[spec]
    assert (j.n_prompts, j.n_asked, j.n_parse_failures, j.n_pairs_left_out) == (6, 24, 0, 0)
    rates = j.win_rates["final vs sft"]
    assert list(rates)[-2:] == ["without constraint", "overall"] and len(rates) == min(6, len(families)) + 2
    assert rates["overall"] == WinRate(0.5, 0.5, 0.5, 6, 1.0, 0.0, 0.0, 0)
    html = write_report(res, tmp_path / "report").read_text()
    assert f"Judged by: the embedded world&#x27;s gold judge; an AI judge (openai:{judge['url']}, model tiny-judge)" \
        in html
    assert "ppo-ptx-r1 vs SFT: gold win rate" in html and "<h2>Win rates (gold judge)</h2>" in html
