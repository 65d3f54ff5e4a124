"""`tiller status`: run folders fabricated as `tiller run` leaves them at several points, a round waiting on a
real SQLite app database, a run whose process is gone, the round's rule by hand, the table and the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from helpers import fake_run
from tiller.config import to_dict
from tiller.labelers import LabelConfig
from tiller.pipeline import RunConfig
from tiller.status import (
    LabelerProgress,
    check_rule,
    format_status,
    mark_failed,
    public_url,
    read_status,
    run_status,
    write_status,
)

SETUP = ["world/manifest.json", "base", "sft"]
ROUND1 = ["data/samples-r1.jsonl", "data/rankings-r1.jsonl", "rm-r1", "policy-r1", "policy-dpo-r1"]
ROUND2 = ["data/samples-r2.jsonl", "data/rankings-r2.jsonl", "rm-r2", "policy-r2"]
END = ["report/results.json", "report/report.html"]
# the order `tiller run` goes through them with rounds=2, arms=[dpo] on the embedded world (pipeline.py)
STAGES = ["world", "pretrain", "sft", "sample-r1", "label-r1", "rm-r1", "ppo-r1", "dpo-r1", "sample-r2", "label-r2",
          "rm-r2", "ppo-r2", "eval", "report"]
BATCH = "demo-samples-r1"


def config(**label: Any) -> dict[str, Any]:
    """run-config.json of a two-round run with the DPO arm; ``label``: LabelConfig fields."""
    return to_dict(RunConfig(rounds=2, arms=["dpo"], label=LabelConfig(**label)))


def resume(rd: Path) -> str:
    return f"tiller run --run {rd} --config {rd / 'run-config.json'}"


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # ended and reaped: nothing has this pid now (until the system hands it out again)
    return proc.pid


def test_write_status_replaces_the_file_atomically(tmp_path: Path) -> None:
    write_status(tmp_path, "sft")
    write_status(tmp_path, "label-r2", state="waiting", round=2, batch="b", db="sqlite:///x.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]  # no temporary file left
    status = json.loads((tmp_path / "status.json").read_text())
    assert status == {**status, "stage": "label-r2", "state": "waiting", "round": 2, "batch": "b", "db": "sqlite:///x.db",
                      "pid": os.getpid(), "host": socket.gethostname()}
    assert datetime.fromisoformat(status["updated"]).tzinfo is not None
    assert read_status(tmp_path) == status
    with pytest.raises(ValueError, match="state must be one of running, waiting, done, failed"):
        write_status(tmp_path, "sft", state="paused")
    (tmp_path / "status.json").write_text("{not json")
    assert read_status(tmp_path) is None


@pytest.mark.parametrize("counts, overlap, agreement, shared, min_done, min_agreement, verdict, needed, more", [
    ({"done": 4, "pending": 4}, 2, None, 0, 1.0, 0.0, "wait", 8, 4),
    ({"done": 4, "skipped": 1, "pending": 3}, 2, None, 0, 1.0, 0.0, "wait", 8, 3),  # at most what is pending
    ({"done": 5, "skipped": 3}, 2, None, 0, 1.0, 0.0, "go", 8, 0),  # settled: skipped ones do not block
    ({"done": 4, "pending": 4}, 2, None, 0, 0.5, 0.0, "go", 4, 0),  # early
    ({"done": 5, "pending": 3}, 2, None, 0, 0.7, 0.0, "wait", 6, 1),  # ceil(0.7 * 8) = 6
    ({"done": 6, "pending": 2}, 2, None, 0, 0.75, 0.0, "go", 6, 0),  # 0.75 * 8 = 6 exactly
    ({"done": 6, "skipped": 2, "pending": 2}, 2, None, 0, 0.75, 0.0, "wait", 8, 2),  # skipped are not done
    ({"done": 8, "pending": 2}, 2, 0.5, 5, 0.5, 0.6, "wait", 5, 2),  # low agreement: wait for the rest
    ({"done": 8, "skipped": 2}, 2, 0.5, 5, 0.5, 0.6, "fail", 5, 0),  # ... and fail once settled
    ({"done": 8, "skipped": 2}, 2, 0.5, 4, 0.5, 0.6, "go", 5, 0),  # 4 shared items measure nothing
    ({"done": 8, "pending": 2}, 2, 0.5, 4, 0.5, 0.6, "wait", 5, 2),  # early, but the gate cannot be read yet
    ({"done": 8, "pending": 2}, 2, 0.7, 5, 0.5, 0.6, "go", 5, 0),  # early, and agreement is enough
    ({"done": 8, "pending": 2}, 1, None, 0, 0.5, 0.9, "go", 5, 0),  # overlap 1: no agreement to check
])
def test_the_rule_by_hand(counts, overlap, agreement, shared, min_done, min_agreement, verdict, needed, more) -> None:
    check = check_rule(counts, overlap, agreement, 12, shared, min_done, min_agreement)
    assert (check.verdict, check.needed, check.more, check.met) == (verdict, needed, more, verdict == "go")
    assert check.total == sum(counts.values()) and check.done == counts["done"]


def test_the_rule_says_why() -> None:
    assert check_rule({"done": 5, "skipped": 3}, 2, None, 0, 0).reason == "every assignment is settled (5 done, 3 skipped)"
    assert check_rule({"done": 8, "skipped": 2}, 2, 0.5, 12, 4, 0.5, 0.6).reason == (
        "every assignment is settled (8 done, 2 skipped); agreement not checked: 4 items with two or more rankings, "
        "5 needed")
    assert check_rule({"done": 8, "pending": 2}, 2, 0.5, 12, 5, 0.5, 0.6).reason == (
        "agreement 50.0% over 12 pairs is below min_agreement 0.6 so far")
    assert check_rule({"done": 4, "pending": 4}, 2, None, 0, 0, 0.5).reason == "4 of 8 assignments done, min_done 0.5 reached"


def test_run_status_at_several_points(tmp_path: Path) -> None:
    rd = fake_run(tmp_path / "demo", config(), [])
    st = run_status(rd)
    assert [s.name for s in st.stages] == STAGES and not any(s.done for s in st.stages)
    assert (st.state, st.stage, st.rounds, st.labeler) == ("not started", None, 2, "world")
    assert st.next == f"not started: `tiller run --run {rd}`"

    fake_run(rd, config(), [*SETUP, "data/samples-r1.jsonl"])
    write_status(rd, "label-r1", round=1)
    st = run_status(rd)
    assert [s.name for s in st.stages if s.done] == ["world", "pretrain", "sft", "sample-r1"]
    assert (st.state, st.stage, st.round, st.pid, st.batch) == ("running", "label-r1", 1, os.getpid(), None)
    assert st.next == "running label-r1; then rm-r1"

    fake_run(rd, config(), [*SETUP, *ROUND1, "data/samples-r2.jsonl"])
    write_status(rd, "label-r2", state="waiting", round=2, batch="demo-samples-r2", db=f"sqlite:///{tmp_path}/none.db")
    mark_failed(rd, "LabelRuleError: labelers disagree")
    status = read_status(rd)
    assert status is not None and status["stage"] == "label-r2" and status["round"] == 2
    assert status["batch"] == "demo-samples-r2" and status["state"] == "failed"
    st = run_status(rd)
    assert (st.state, st.stage, st.error) == ("failed", "label-r2", "LabelRuleError: labelers disagree")
    assert st.next == f"failed at label-r2: LabelRuleError: labelers disagree; rerun `{resume(rd)}` to go on once that is fixed"
    assert st.batch is not None and st.batch.error == "no such database file"
    assert not (tmp_path / "none.db").exists()  # status reads; it never creates a database

    write_status(rd, "failed", state="failed", error="OSError: disk full")  # no stage: the first not done
    st = run_status(rd)
    assert (st.state, st.stage, st.round) == ("failed", "label-r2", 2)
    assert st.next.startswith("failed at label-r2: OSError: disk full; rerun")

    fake_run(rd, config(), [*SETUP, *ROUND1, *ROUND2, *END])
    write_status(rd, "report", state="done", report=str(rd / "report/report.html"))
    st = run_status(rd)
    assert st.state == "done" and all(s.done for s in st.stages)
    assert st.next == f"finished: the report is {rd / 'report' / 'report.html'}"


def test_runs_without_status_file_and_other_plans(tmp_path: Path) -> None:
    old = fake_run(tmp_path / "old", config(), [*SETUP, *ROUND1, *ROUND2, *END])  # made before status.json existed
    assert (run_status(old).state, run_status(old).stage) == ("done", "report")
    half = fake_run(tmp_path / "half", config(), [*SETUP, "data/samples-r1.jsonl"])
    st = run_status(half)
    assert (st.state, st.stage, st.round) == ("stopped", "label-r1", 1)
    assert st.next == f"stopped at label-r1 (rerun `{resume(half)}` to resume)"

    project = to_dict(RunConfig(rounds=1, arms=[], base_model="some/model", rule_rm_flags=["harmful_advice"]))
    project["data"]["source"] = "project"
    rd = fake_run(tmp_path / "project", project, ["data/project/snapshot"])
    assert [(s.name, s.done) for s in run_status(rd).stages] == [
        ("data", True), ("sft", False), ("sample-r1", False), ("label-r1", False), ("rm-r1", False),
        ("rm-harmless-r1", False), ("ppo-r1", False), ("eval", False), ("report", False)]


def test_a_run_whose_process_is_gone_is_stopped(tmp_path: Path) -> None:
    rd = fake_run(tmp_path / "demo", config(), SETUP)
    write_status(rd, "sample-r1", round=1)
    status = json.loads((rd / "status.json").read_text())
    (rd / "status.json").write_text(json.dumps({**status, "pid": dead_pid()}))
    st = run_status(rd)
    assert st.state == "stopped" and st.next == f"stopped at sample-r1 (rerun `{resume(rd)}` to resume)"
    # another machine's pid cannot be checked from here: its word is taken
    (rd / "status.json").write_text(json.dumps({**status, "pid": dead_pid(), "host": "elsewhere"}))
    assert run_status(rd).state == "running"


# -- a round waiting on people in the app ------------------------------------------------------------------


@pytest.fixture
def app_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """A real SQLite app database with labelers ana, ben and chi and batch BATCH: 4 items of 3 answers, overlap
    2, given round-robin to the least loaded (ana: q0 q1 q3, ben: q0 q2 q3, chi: q1 q2). ana ranks all hers,
    ben ranks q0 against her on one pair of three, chi skips q1."""
    pytest.importorskip("sqlalchemy")
    from argon2 import PasswordHasher
    from sqlalchemy import select

    from tiller.feedback import security
    from tiller.feedback.db import init_db, make_engine, session_factory
    from tiller.feedback.models import User
    from tiller.feedback.records import parse_lines
    from tiller.feedback.schemas import RankingCreate
    from tiller.feedback.services.batches import import_batch, list_assignments
    from tiller.feedback.services.labels import skip_assignment, submit_label
    from tiller.feedback.services.users import create_user

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    url = f"sqlite:///{tmp_path / 'app.db'}"
    init_db(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    lines = [json.dumps({"id": f"q{i}", "prompt": [{"role": "user", "content": f"Q{i}?"}], "responses": ["a", "b", "c"]})
             for i in range(4)]
    with sessions() as s:
        for name in ("ana", "ben", "chi"):
            create_user(s, name, "labeler", "correct horse")
        import_batch(s, BATCH, "rank", 2, parse_lines("\n".join(lines), "rank"))
        people = {u.name: u for u in s.scalars(select(User))}
        mine = {n: {a.item.external_id: a.id for a in list_assignments(s, u, batch=BATCH)} for n, u in people.items()}
        assert {n: sorted(m) for n, m in mine.items()} == {"ana": ["q0", "q1", "q3"], "ben": ["q0", "q2", "q3"],
                                                           "chi": ["q1", "q2"]}
        for item in ("q0", "q1", "q3"):
            submit_label(s, people["ana"], mine["ana"][item], RankingCreate(ranking=[[0], [1], [2]], likert=[7, 4, 1]),
                         key=uuid.uuid4().hex)
        # against ana's 0 > 1 > 2: (0,1) opposite, (0,2) and (1,2) alike: 2 of 3 pairs agree
        submit_label(s, people["ben"], mine["ben"]["q0"], RankingCreate(ranking=[[1], [0], [2]], likert=[4, 7, 1]),
                     key=uuid.uuid4().hex)
        skip_assignment(s, people["chi"], mine["chi"]["q1"])
    yield url, sessions
    engine.dispose()


def waiting_run(rd: Path, url: str, **label: Any) -> Path:
    fake_run(rd, config(labeler="app", db=url, overlap=2, **label), [*SETUP, "data/samples-r1.jsonl"])
    write_status(rd, "label-r1", state="waiting", round=1, batch=BATCH, db=url)
    return rd


def test_a_waiting_round_shows_the_batch_per_labeler(app_db: tuple[str, Any], tmp_path: Path) -> None:
    url, _ = app_db
    st = run_status(waiting_run(tmp_path / "demo", url))
    assert (st.state, st.stage, st.round, st.labeler) == ("waiting", "label-r1", 1, "app")
    b = st.batch
    assert b is not None and b.error is None and (b.name, b.db, b.kind, b.items) == (BATCH, url, "rank", 4)
    assert b.counts == {"done": 4, "skipped": 1, "pending": 3}
    assert b.labelers == [LabelerProgress("ana", done=3, agreement=2 / 3), LabelerProgress("ben", 1, 2, agreement=2 / 3),
                          LabelerProgress("chi", pending=1, skipped=1)]
    r = b.rule
    assert r is not None and (r.verdict, r.done, r.needed, r.more, r.total) == ("wait", 4, 8, 3, 8)
    assert (r.agreement, r.compared, r.shared_items, r.agreement_checked) == (pytest.approx(2 / 3), 3, 1, False)
    assert st.next == f"waiting for 3 more rankings in batch {BATCH} (tiller app); then rm-r1"

    st = run_status(waiting_run(tmp_path / "early", url, min_done=0.5))
    assert st.batch is not None and st.batch.rule is not None and st.batch.rule.met
    assert st.next == (f"batch {BATCH} may go on (4 of 8 assignments done, min_done 0.5 reached): the run takes it at "
                       "its next check; then rm-r1")

    st = run_status(waiting_run(tmp_path / "gated", url, min_done=0.5, min_agreement=0.8))
    assert st.next == (f"waiting for 3 more rankings in batch {BATCH} (tiller app) (4 of 8 done, but agreement is not "
                       "measurable yet; agreement not checked: 1 items with two or more rankings, 5 needed); then rm-r1")

    write_status(tmp_path / "gated", "label-r1", state="waiting", round=1, batch="nope", db=url)
    st = run_status(tmp_path / "gated")
    assert st.batch is not None and st.batch.error == "no such batch (yet)"
    assert st.next == f"waiting on batch nope ({url}): no such batch (yet); then rm-r1"


def test_a_stopped_waiting_run_still_shows_its_batch(app_db: tuple[str, Any], tmp_path: Path) -> None:
    url, _ = app_db
    rd = waiting_run(tmp_path / "demo", url)
    status = json.loads((rd / "status.json").read_text())
    (rd / "status.json").write_text(json.dumps({**status, "pid": dead_pid()}))
    st = run_status(rd)
    assert st.state == "stopped" and st.next == f"stopped at label-r1 (rerun `{resume(rd)}` to resume)"
    assert st.batch is not None and st.batch.counts == {"done": 4, "skipped": 1, "pending": 3}


def test_format_status(app_db: tuple[str, Any], tmp_path: Path) -> None:
    url, _ = app_db
    rd = waiting_run(tmp_path / "demo", url)
    st = run_status(rd)
    lines = format_status(st).splitlines()
    assert lines[0] == f"run        {rd}: labeler app, 2 rounds"
    assert lines[1].startswith(f"state      waiting at label-r1 (round 1 of 2), updated {st.updated} by pid {os.getpid()}")
    assert lines[2:6] == [
        "setup      world done . pretrain done . sft done",
        "round 1    sample done . label waiting . rm - . ppo - . dpo -",
        "round 2    sample - . label - . rm - . ppo -",
        "end        eval - . report -",
    ]
    assert lines[6] == f"batch      {BATCH} in {url}: 4 of 8 done, 8 needed (min_done 1), 3 pending, 1 skipped, 0 closed"
    assert [line.split() for line in lines[7:11]] == [
        ["labeler", "done", "pending", "skipped", "closed", "agreement"],
        ["ana", "3", "0", "0", "0", "66.7%"],
        ["ben", "1", "2", "0", "0", "66.7%"],
        ["chi", "0", "1", "1", "0", "-"],
    ]
    assert lines[11].startswith("agreement  66.7% over 3 pairs, 1 items ranked twice or more (min_agreement 0); rule: wait")
    assert lines[12] == f"next       waiting for 3 more rankings in batch {BATCH} (tiller app); then rm-r1"
    assert len(lines) == 13


def test_status_cli(app_db: tuple[str, Any], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tiller.cli import app

    url, _ = app_db
    rd = waiting_run(tmp_path / "demo", url)
    runner = CliRunner()
    shown = runner.invoke(app, ["status", "--run", str(rd)])
    assert shown.exit_code == 0, shown.output
    assert shown.output == format_status(run_status(rd)) + "\n"
    as_json = runner.invoke(app, ["status", "--run", str(rd), "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data == json.loads(json.dumps(run_status(rd).to_dict()))
    assert data["batch"]["rule"]["more"] == 3 and data["batch"]["labelers"][1] == {
        "name": "ben", "done": 1, "pending": 2, "skipped": 0, "closed": 0, "agreement": pytest.approx(2 / 3)}
    missing = runner.invoke(app, ["status", "--run", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and f"error: no run folder {tmp_path / 'nope'}" in missing.output


def test_database_passwords_are_not_shown() -> None:
    assert public_url("postgresql+psycopg://tiller:s3cret@db.example/feedback") == \
        "postgresql+psycopg://tiller:***@db.example/feedback"
    assert public_url("sqlite:///feedback.db") == "sqlite:///feedback.db"


def test_next_warns_while_agreement_is_low(tmp_path: Path) -> None:
    from tiller.status import BatchStatus, RunStatus, StageState, _next

    rule = check_rule({"done": 10, "pending": 2}, 2, 0.25, 12, 5, 1.0, 0.6)  # 5 shared items at 25%: waits
    st = RunStatus(str(tmp_path), state="waiting", stage="label-r1", stages=[StageState("label-r1", "", False),
                                                                          StageState("rm-r1", "", False)],
                   batch=BatchStatus("b", "sqlite:///f.db", kind="rank", rule=rule))
    assert _next(st, tmp_path) == ("waiting for 2 more rankings in batch b (tiller app) (agreement 25.0% over 12 pairs "
                                   "is below min_agreement 0.6 so far); then rm-r1")
