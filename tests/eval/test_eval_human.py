"""Evaluation by people (``tiller eval --judge app``, tiller.eval.human): the maths on rankings worked out by
hand, the blinding, resuming without a second import, and the whole loop on the real app over HTTP with a
scripted labeler and tiny real models."""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("argon2")

from sqlalchemy import func, select  # noqa: E402

from tiller.config import ConfigError  # noqa: E402
from tiller.eval.elo import elo_ratings  # noqa: E402
from tiller.eval.evaluate import wilson  # noqa: E402
from tiller.eval.human import KEY_FILE, HumanEval, blind_items, human_eval, human_results, write_human_report  # noqa: E402
from tiller.eval.human_cli import held_out_prompts, human_lines, named_policy, policy_specs  # noqa: E402
from tiller.eval.results import Estimate, WinRate  # noqa: E402

pytestmark = pytest.mark.usefixtures("cheap_argon2")  # users log in: argon2 at minimal cost

# --------------------------------------------------------------------------------------------- by hand

# Three policies, two prompts, two labelers. Positions of each item's answers (the key):
KEY = {"item-0000": ["ppo", "sft", "dpo"], "item-0001": ["sft", "dpo", "ppo"]}
RECORDS = [
    # ana: ppo > sft = dpo
    {"id": "item-0000", "labeler": "ana", "responses": ["a", "b", "c"], "ranking": [[0], [1, 2]],
     "likert": [6, 4, 4], "flags": [[], ["hallucination"], ["hallucination", "fails_instruction"]]},
    # ben: sft > ppo > dpo; no Likert score for dpo's answer
    {"id": "item-0000", "labeler": "ben", "responses": ["a", "b", "c"], "ranking": [[1], [0], [2]],
     "likert": [5, 6, None], "flags": [[], [], ["harmful_advice"]]},
    # ana: ppo > sft > dpo
    {"id": "item-0001", "labeler": "ana", "responses": ["d", "e", "f"], "ranking": [[2], [0], [1]],
     "likert": [3, 2, 7], "flags": [["fails_instruction"], ["fails_instruction"], []]},
    # ben: all three tied; flags not asked (None): left out of the flag shares
    {"id": "item-0001", "labeler": "ben", "responses": ["d", "e", "f"], "ranking": [[0, 1, 2]],
     "likert": [4, 4, 4], "flags": None},
]


def test_human_results_by_hand() -> None:
    h = human_results(RECORDS, KEY, "sft", order=["sft", "ppo", "dpo"])
    assert h.policies == ["sft", "ppo", "dpo"] and h.baseline == "sft"
    assert (h.n_items, h.n_labels, h.labelers) == (2, 4, ["ana", "ben"])
    assert set(h.win_rates) == {"ppo", "dpo"}

    # ppo vs sft: 1 (ana), 0 (ben), 1 (ana), 0.5 (tie) -> 0.625; sd = sqrt(0.6875 / 3) = 0.478714,
    # half-width 1.96 * 0.478714 / 2 = 0.469139; the top is clipped at 1
    w = h.win_rates["ppo"]
    assert (w.rate, w.n, w.wins, w.ties, w.losses) == (0.625, 4, 0.5, 0.25, 0.25)
    assert w.lo == pytest.approx(0.155861, abs=1e-6) and w.hi == 1.0
    # dpo vs sft: 0.5 (tied with sft), 0, 0, 0.5 -> 0.25; sd = sqrt(0.25 / 3) = 0.288675, half-width 0.282902
    w = h.win_rates["dpo"]
    assert (w.rate, w.n, w.wins, w.ties, w.losses) == (0.25, 4, 0.0, 0.5, 0.5)
    assert w.lo == 0.0 and w.hi == pytest.approx(0.532902, abs=1e-6)

    # Likert: ppo 6, 5, 7, 4 -> 5.5, sd sqrt(5 / 3) = 1.290994, half-width 1.265175
    assert (h.likert["ppo"].value, h.likert["ppo"].n) == (5.5, 4)
    assert (h.likert["ppo"].lo, h.likert["ppo"].hi) == pytest.approx((4.234825, 6.765175), abs=1e-6)
    # sft 4, 6, 3, 4 -> 4.25, sd sqrt(4.75 / 3) = 1.258306, half-width 1.233140
    assert h.likert["sft"].value == 4.25
    assert (h.likert["sft"].lo, h.likert["sft"].hi) == pytest.approx((3.016860, 5.483140), abs=1e-6)
    # dpo 4, (None), 2, 4 -> 10/3 over n=3, sd sqrt(4/3) = 1.154701, half-width 1.96 * 1.154701 / sqrt(3) = 1.306667
    assert h.likert["dpo"].n == 3 and h.likert["dpo"].value == pytest.approx(10 / 3)
    assert (h.likert["dpo"].lo, h.likert["dpo"].hi) == pytest.approx((2.026667, 4.640000), abs=1e-6)

    # Flags over the 3 rankings that asked for them. Wilson at z = 1.96, n = 3:
    # 0/3 -> [0, 0.561506]; 1/3 -> [0.061490, 0.792345]; 2/3 -> [0.207655, 0.938510]
    zero, one, two = (0.0, 0.0, 0.561506), (1 / 3, 0.061490, 0.792345), (2 / 3, 0.207655, 0.938510)

    def share(policy: str, flag: str) -> tuple[float | None, ...]:
        e = h.flags[policy][flag]
        assert e.n == 3
        return (e.value, e.lo, e.hi)

    assert share("ppo", "hallucination") == pytest.approx(zero, abs=1e-6)
    assert share("sft", "hallucination") == pytest.approx(one, abs=1e-6)
    assert share("sft", "fails_instruction") == pytest.approx(one, abs=1e-6)
    assert share("dpo", "fails_instruction") == pytest.approx(two, abs=1e-6)
    assert share("dpo", "harmful_advice") == pytest.approx(one, abs=1e-6)
    assert share("dpo", "hallucination") == pytest.approx(one, abs=1e-6)
    assert share("sft", "harmful_advice") == pytest.approx(zero, abs=1e-6)
    assert {"fails_instruction", "hallucination", "harmful_advice", "inappropriate"} <= set(h.flags["ppo"])

    # Elo: every pair of every ranking, listed by hand; sft is the anchor at 1000
    matches = [("ppo", "sft", 1.0), ("ppo", "dpo", 1.0), ("sft", "dpo", 0.5),
               ("ppo", "sft", 0.0), ("ppo", "dpo", 1.0), ("sft", "dpo", 1.0),
               ("sft", "dpo", 1.0), ("sft", "ppo", 0.0), ("dpo", "ppo", 0.0),
               ("sft", "dpo", 0.5), ("sft", "ppo", 0.5), ("dpo", "ppo", 0.5)]
    assert h.elo == pytest.approx(elo_ratings(matches, anchor="sft"))
    assert h.elo["sft"] == 1000.0 and h.elo["ppo"] > 1000.0 > h.elo["dpo"]
    assert h.elo_intervals["sft"] == (1000.0, 1000.0)
    lo, hi = h.elo_intervals["ppo"]
    assert lo <= h.elo["ppo"] <= hi


def test_human_results_default_order_and_errors() -> None:
    h = human_results(RECORDS, KEY, "sft")
    assert h.policies == ["sft", "dpo", "ppo"]  # the baseline first, then by name
    with pytest.raises(ConfigError, match="baseline 'base' is not among"):
        human_results(RECORDS, KEY, "base")
    with pytest.raises(ConfigError, match="item 'item-0009' is not in the key"):
        human_results([{**RECORDS[0], "id": "item-0009"}], KEY, "sft")
    with pytest.raises(ConfigError, match="does not place each of its 3 answers once"):
        human_results([{**RECORDS[0], "ranking": [[0], [1]]}], KEY, "sft")
    with pytest.raises(ConfigError, match="does not place each"):
        human_results([{**RECORDS[0], "ranking": [[0, 1], 2]}], KEY, "sft")
    empty = human_results([], KEY, "sft")  # everything skipped: no numbers, but a result
    assert empty.win_rates["ppo"] == WinRate(n=0) and empty.elo == {} and empty.n_labels == 0


def test_human_eval_json_round_trip_and_tolerance() -> None:
    h = human_results(RECORDS, KEY, "sft", order=["sft", "ppo", "dpo"])
    h.batch = "b1"
    back = HumanEval.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back == h
    odd = HumanEval.from_dict({"baseline": 3, "policies": ["a", 1], "win_rates": [], "likert": {"a": "x"},
                               "flags": {"a": {"hallucination": {"value": 0.5, "n": 2}}}, "elo": {"a": "high"},
                               "n_items": "many"})
    assert odd.baseline == "" and odd.policies == ["a"] and odd.win_rates == {} and odd.elo == {}
    assert odd.likert == {"a": Estimate()} and odd.flags["a"]["hallucination"] == Estimate(0.5, None, None, 2)
    assert odd.n_items == 0 and HumanEval.from_dict(None) == HumanEval(baseline="")


def test_report_and_table_render_with_missing_numbers(tmp_path: Path) -> None:
    h = human_results(RECORDS, KEY, "sft", order=["sft", "ppo", "dpo"])
    h.likert["dpo"] = Estimate(n=0)  # nothing to show: a dash, not an error
    page = write_human_report(h, tmp_path)
    html = page.read_text(encoding="utf-8")
    assert "Human evaluation" in html and "62.5%" in html and "[15.6%, 100.0%]" in html and "(anchor)" in html
    assert (tmp_path / "human-win-rates.png").stat().st_size > 1000
    assert (tmp_path / "human-metadata.png").stat().st_size > 1000
    # the run report includes the partial: it renders in the report's own environment too (escaping, strict)
    from tiller.eval.report import _env

    section = _env().from_string('{% include "_human.html.j2" %}').render(
        human=h, human_plots={"human_win_rates": "human-win-rates.png", "human_metadata": None})
    assert "62.5%" in section and "human-win-rates.png" in section and "human-metadata.png" not in section
    lines = human_lines(h)
    assert any(line.startswith("ppo") and "62.5% [15.6%, 100.0%]" in line for line in lines)
    assert any(line.startswith("sft") and "baseline" in line for line in lines)


# --------------------------------------------------------------------------------------------- blinding


def test_blind_items_permute_balance_and_map_back() -> None:
    names = ["policy", "sft", "other"]
    prompts = [f"Question {i}?" for i in range(12)]
    answers = {n: [f"answer {j} {i}" for i in range(12)] for j, n in enumerate(names)}
    records, key = blind_items(prompts, answers, seed=3)
    assert [r["id"] for r in records] == list(key) and len(set(key)) == 12
    for i, r in enumerate(records):
        assert r["prompt"] == prompts[i] and set(r) == {"id", "prompt", "responses"}
        assert sorted(key[r["id"]]) == sorted(names)  # a permutation of the policies
        assert [answers[p][i] for p in key[r["id"]]] == r["responses"]  # the key maps each answer back
        assert not any(n in r["id"] for n in names)
    assert blind_items(prompts, answers, seed=3) == (records, key)
    assert blind_items(prompts, answers, seed=4)[1] != key
    # 12 prompts are two blocks of the 3! orders: each policy sits at each position exactly 4 times
    for pos in range(3):
        assert Counter(ps[pos] for ps in key.values()) == {n: 4 for n in names}
    # two policies, an odd number of prompts: 4 and 3 times first
    _, key2 = blind_items(prompts[:7], {"a": ["x"] * 7, "b": ["y"] * 7}, seed=0)
    assert sorted(Counter(ps[0] for ps in key2.values()).values()) == [3, 4]
    with pytest.raises(ConfigError, match="two or more policies"):
        blind_items(prompts, {"a": answers["sft"]}, seed=0)
    with pytest.raises(ConfigError, match="11 answers for 12 prompts"):
        blind_items(prompts, {"a": answers["sft"], "b": answers["sft"][:11]}, seed=0)


def test_policy_names_and_prompts_file(tmp_path: Path) -> None:
    assert named_policy("runs/x/policy-r3/") == ("policy-r3", "runs/x/policy-r3/")
    assert named_policy("ppo=runs/x/policy-r3") == ("ppo", "runs/x/policy-r3")
    assert named_policy("runs/a=b/sft") == ("sft", "runs/a=b/sft")  # '=' inside a path is not a name
    assert policy_specs("runs/x/final", "runs/x/sft", ["old=runs/y/final"]) == {
        "final": "runs/x/final", "sft": "runs/x/sft", "old": "runs/y/final"}
    with pytest.raises(ConfigError, match="two policies are named 'final'"):
        policy_specs("runs/x/final", "runs/x/sft", ["runs/y/final"])
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"Q{i}?", "user_id": "u", "split": "test" if i % 2 else "train"}
            for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    test = [[{"role": "user", "content": f"Q{i}?"}] for i in (1, 3, 5, 7, 9)]
    assert held_out_prompts(path, tmp_path / "no-world", 60, None, 0) == test  # only the test split
    three = held_out_prompts(path, tmp_path / "no-world", 60, 3, 0)
    assert len(three) == 3 and all(p in test for p in three) and three == sorted(three, key=test.index)


def test_judge_app_cli_refuses_the_other_judges_options(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tiller.cli import app as cli

    r = CliRunner().invoke(cli, ["eval", "--judge", "app", "--policy", "a", "--baseline", "b", "--headroom-rm", "rm",
                                 "--db", f"sqlite:///{tmp_path / 'x.db'}"])
    assert r.exit_code == 2 and "not --judge app" in r.stderr
    r = CliRunner().invoke(cli, ["eval", "--judge", "app", "--policy", "a"])
    assert r.exit_code == 2 and "give --baseline" in r.stderr


# --------------------------------------------------------------------------------------------- the app


def counts(sessions: Any) -> tuple[int, ...]:
    from tiller.feedback.models import Assignment, Batch, Item

    with sessions() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Batch, Item, Assignment))


def items(sessions: Any) -> list[tuple[str, Any, Any]]:
    from tiller.feedback.models import Item

    with sessions() as s:
        return [(i.external_id, i.responses, i.meta) for i in s.scalars(select(Item).order_by(Item.position))]


PROMPTS = ["Name a colour.", "What is 2 + 2?", "Say hello.", "Name a river."]
ANSWERS = {"final": ["Red.", "4", "Hello!", "The Olun."], "sft": ["Blue", "5", "Hi", "A river."],
           "dpo": ["Green.", "four", "", "Olun"]}


def test_human_eval_resumes_without_importing_twice(db: tuple[str, Any], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    url, sessions = db
    out = tmp_path / "he"
    with pytest.raises(TimeoutError, match="8 pending.*run the same command again"):
        human_eval(url, "he1", PROMPTS, ANSWERS, "sft", out, overlap=2, poll_s=0.02, timeout_s=0.2)
    assert "imported 4 prompts x 3 answers" in capsys.readouterr().out
    assert counts(sessions) == (1, 4, 8)
    first, key = items(sessions), (out / KEY_FILE).read_text()
    # the app holds nothing that names a policy: ids are item-NNNN, no import metadata
    assert all(re.fullmatch(r"item-\d{4}", i) and meta == {} for i, _, meta in first)
    assert json.loads(key)["items"] == {i: json.loads(key)["items"][i] for i, _, _ in first}

    # killed while waiting, run again (same answers, or none at all): the same batch, waiting resumes
    for answers in (ANSWERS, {}):
        with pytest.raises(TimeoutError):
            human_eval(url, "he1", PROMPTS, answers, "sft", out, overlap=2, poll_s=0.02, timeout_s=0.2)
        assert "already in the app" in capsys.readouterr().out
        assert counts(sessions) == (1, 4, 8) and items(sessions) == first and (out / KEY_FILE).read_text() == key

    with pytest.raises(ConfigError, match="compares final, sft, dpo, not final, sft"):
        human_eval(url, "he1", PROMPTS, {k: ANSWERS[k] for k in ("final", "sft")}, "sft", out, timeout_s=0.1)
    with pytest.raises(ConfigError, match="compares final, sft, dpo: no 'base'"):
        human_eval(url, "he1", [], {}, "base", out, timeout_s=0.1)
    # another batch beside it; he1's key is not its key
    with pytest.raises(TimeoutError):
        human_eval(url, "he2", PROMPTS[:2], {k: v[:2] for k, v in ANSWERS.items()}, "sft", tmp_path / "he2",
                   poll_s=0.02, timeout_s=0.1)
    with pytest.raises(ConfigError, match="is not the key of batch 'he2'"):
        human_eval(url, "he2", [], {}, "sft", out, timeout_s=0.1)
    assert counts(sessions) == (2, 6, 10)
    (out / KEY_FILE).unlink()
    with pytest.raises(ConfigError, match="its key .* is missing"):
        human_eval(url, "he1", PROMPTS, ANSWERS, "sft", out, timeout_s=0.1)
    assert counts(sessions) == (2, 6, 10)


def test_human_eval_import_refused_leaves_no_key(db: tuple[str, Any], tmp_path: Path) -> None:
    url, sessions = db
    with pytest.raises(ConfigError, match=r"overlap must be between 1 and the number of labelers \(2\), not 3"):
        human_eval(url, "he1", PROMPTS, ANSWERS, "sft", tmp_path, overlap=3, timeout_s=0.1)
    assert counts(sessions) == (0, 0, 0) and not (tmp_path / KEY_FILE).exists()
    with pytest.raises(ConfigError, match="baseline 'base' is not one of the policies"):
        human_eval(url, "he1", PROMPTS, ANSWERS, "base", tmp_path, timeout_s=0.1)


# --------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_policies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three different random 1-layer GPT-2s sharing a chat tokenizer: ``better``, ``base`` and ``other``."""
    import torch

    from tiller.stages.pretrain import PretrainConfig, build_model, train_tokenizer

    root = tmp_path_factory.mktemp("human")
    tok = train_tokenizer(["The river Olun runs past Kest.", "Red, blue and green are colours. 2 + 2 = 4"] * 10, 300)
    out = {}
    for seed, name in enumerate(("better", "base", "other")):
        torch.manual_seed(seed)
        build_model(PretrainConfig(n_layer=1, n_embd=32, n_head=2, vocab_size=300), tok).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    return out


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, "page has no CSRF token"
    return m.group(1)


def scripted_labeler(base_url: str, name: str, batch: str, key_path: Path, flag_baseline: bool) -> int:
    """Log in through the real pages, then rank every assignment of ``batch`` through the JSON API: the
    ``better`` policy's answer first, the other two tied (the key file tells which is which: the test's oracle,
    never the app's). Likert 6 for ``better``, 3 for the rest; ``flag_baseline``: flag ``base`` hallucinated."""
    import httpx

    with httpx.Client(base_url=base_url, timeout=30) as client:
        page = client.get("/login")
        r = client.post("/login", data={"name": name, "password": "correct horse", "csrf_token": csrf_of(page.text)})
        assert r.status_code == 303, r.text
        headers = {"X-CSRF-Token": csrf_of(client.get("/").text)}
        done = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            r = client.get("/api/assignments/next", params={"batch": batch})
            if r.status_code == 404:
                if done:
                    return done
                time.sleep(0.05)  # not imported yet
                continue
            assert r.status_code == 200, r.text
            a = r.json()
            at = json.loads(key_path.read_text())["items"][a["item_id"]]
            assert len(a["responses"]) == 3
            best = at.index("better")
            rest = [i for i in range(3) if i != best]
            body = {"ranking": [[best], rest], "likert": [6 if p == "better" else 3 for p in at],
                    "flags": [["hallucination"] if flag_baseline and p == "base" else [] for p in at],
                    "time_spent_s": 2.0}
            r = client.post(f"/api/assignments/{a['id']}/label", json=body,
                            headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
            assert r.status_code == 201, r.text
            done += 1
    raise AssertionError(f"{name} did not finish within 120 s")


def test_tiller_eval_judge_app_end_to_end(db: tuple[str, Any], tiny_policies: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from helpers import live_server
    from tiller.cli import app as cli
    from tiller.feedback.app import create_app

    url, sessions = db
    prompts = tmp_path / "held-out.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"h{i}", "prompt": f"Tell me about {w}.", "user_id": "u9"}) + "\n"
                               for i, w in enumerate(["Kest", "the river", "red", "two", "Olun", "green"])))
    out = tmp_path / "human"
    args = ["eval", "--run", str(tmp_path / "run"), "--judge", "app", "--policy", str(tiny_policies["better"]),
            "--baseline", str(tiny_policies["base"]), "--also", f"other={tiny_policies['other']}",
            "--prompts", str(prompts), "--db", url, "--batch", "he-e2e", "--overlap", "2", "--poll", "0.05",
            "--timeout", "150", "--out", str(out)]
    result: dict[str, Any] = {}
    app = create_app(url, secret_key="test-secret")
    try:
        with live_server(app) as base_url:
            thread = threading.Thread(target=lambda: result.update(r=CliRunner().invoke(cli, args)), daemon=True)
            thread.start()
            done = {name: scripted_labeler(base_url, name, "he-e2e", out / KEY_FILE, name == "ana")
                    for name in ("ana", "ben")}
            thread.join(timeout=60)
    finally:
        app.state.db_engine.dispose()
    assert not thread.is_alive(), "tiller eval kept waiting after every assignment was done"
    r = result["r"]
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert done == {"ana": 6, "ben": 6}  # overlap 2: every prompt ranked by both
    assert "imported 6 prompts x 3 answers" in r.output and f"report: {out / 'human-eval.html'}" in r.output
    assert re.search(r"^better\s+100\.0% \[100\.0%, 100\.0%\]\s+6\.00 \[6\.00, 6\.00\]", r.output, re.M), r.output

    h = HumanEval.from_dict(json.loads((out / "human-eval.json").read_text()))
    assert h.policies == ["better", "base", "other"] and h.baseline == "base" and h.batch == "he-e2e"
    assert (h.n_items, h.n_labels, h.labelers) == (6, 12, ["ana", "ben"])
    assert h.win_rates["better"] == WinRate(1.0, 1.0, 1.0, 12, 0.0, 1.0, 0.0)  # always preferred: no spread
    assert h.win_rates["other"] == WinRate(0.5, 0.5, 0.5, 12, 1.0, 0.0, 0.0)  # always tied with the baseline
    assert h.likert["better"] == Estimate(6.0, 6.0, 6.0, 12) and h.likert["base"] == Estimate(3.0, 3.0, 3.0, 12)
    assert h.flags["base"]["hallucination"] == Estimate(*wilson(6, 12), n=12)  # ana flagged all 6, ben none
    assert h.flags["better"]["hallucination"] == Estimate(*wilson(0, 12), n=12)
    assert h.elo["base"] == 1000.0 and h.elo["better"] > 1200 and math.isclose(h.elo["other"], 1000.0, abs_tol=1e-6)
    html = (out / "human-eval.html").read_text()
    assert "100.0%" in html and 'src="human-win-rates.png"' in html and 'src="human-metadata.png"' in html
    assert (out / "human-win-rates.png").is_file() and (out / "human-metadata.png").is_file()

    # blind: the app's items name no policy; the export labelers and admins see has no policy field either
    assert all(meta == {} and re.fullmatch(r"item-\d{4}", i) for i, _, meta in items(sessions))
    labels = [json.loads(line) for line in (out / "human-eval-labels.jsonl").read_text().splitlines()]
    assert len(labels) == 12 and not any("policy" in rec for rec in labels)

    # run again: nothing sampled or imported, the same results at once
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "sampling" not in again.output and "already in the app" in again.output
    assert counts(sessions) == (1, 6, 12)
