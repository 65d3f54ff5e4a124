"""A project run with people ranking (issue #14): ``tiller run`` on examples/own-project/project.yaml with a
tiny local base model, the labels given through the real app's HTTP API by a scripted labeler (never
written into the database directly), the run killed with SIGKILL while it waits and started again, and
people's blinded comparisons of the final policy with SFT at the end, ending in the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("argon2")
httpx = pytest.importorskip("httpx")

from helpers import live_server  # noqa: E402
from tiller.data import read_records  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "own-project" / "project.yaml"
TINY = ["sft.epochs=1", "sample.n_prompts=6", "sample.max_new_tokens=16", "rm.ensemble=1",
        "ppo.iterations=2", "ppo.rollout_batch=8", "ppo.minibatch_size=4", "ppo.eval_every=2", "ppo.eval_prompts=4",
        "ppo.max_new_tokens=16", "dpo.epochs=1", "eval.n_prompts=3", "label.poll_s=0.2"]


class ScriptedLabeler:
    """A person at the app, played over HTTP with an API token: takes the next assignment of a batch and
    ranks its answers (shortest first, ties for equal lengths), with Likert scores, until none is left or
    ``limit`` labels are given."""

    def __init__(self, url: str, token: str) -> None:
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def label(self, batch: str, limit: int | None = None) -> int:
        n = 0
        while limit is None or n < limit:
            r = self.client.get("/api/assignments/next", params={"batch": batch})
            if r.status_code == 404:
                return n
            r.raise_for_status()
            a = r.json()
            lengths = sorted({len(x) for x in a["responses"]})
            ranking = [[i for i, x in enumerate(a["responses"]) if len(x) == n_] for n_ in lengths]
            likert = [7 - min(6, lengths.index(len(x))) for x in a["responses"]]
            body = {"ranking": ranking, "likert": likert, "time_spent_s": 3.0}
            r = self.client.post(f"/api/assignments/{a['id']}/label", json=body,
                                 headers={"Idempotency-Key": f"{a['id']}-scripted"})
            assert r.status_code == 201, r.text
            n += 1
        return n


def wait_for(pred: Any, what: str, proc: subprocess.Popen, log: Path, timeout: float = 400) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (got := pred()):
            return got
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)
    raise AssertionError(f"no {what} within {timeout} s:\n{log.read_text()[-4000:]}")


def status(rd: Path) -> dict[str, Any]:
    try:
        return json.loads((rd / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def start_run(rd: Path, base: Path, db: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tiller.cli", "run", "--config", str(EXAMPLE), "--run", str(rd),
           f"base_model={base}", f"label.db={db}", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TILLER_QUIET": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.mark.slow
def test_project_run_with_people_killed_while_waiting_resumes_and_reports(tiny_base_dir, tmp_path, cheap_argon2):
    from tiller.feedback.app import create_app
    from tiller.feedback.db import init_db, make_engine, session_factory
    from tiller.feedback.models import Batch, Item
    from tiller.feedback.services.users import create_token, create_user
    from tiller.status import run_status

    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    init_db(db)
    engine = make_engine(db)
    sessions = session_factory(engine)
    with sessions() as s:
        tokens = [create_token(s, create_user(s, name, "labeler", "correct horse")) for name in ("ana", "ben")]
    rd, log = tmp_path / "proj", tmp_path / "run.log"
    batch = "proj-samples-r1"
    with live_server(create_app(db, secret_key="k" * 32)) as url:
        ana, ben = (ScriptedLabeler(url, t) for t in tokens)
        proc = start_run(rd, tiny_base_dir, db, log)
        try:
            wait_for(lambda: status(rd).get("state") == "waiting" and status(rd).get("batch") == batch,
                     "wait for round 1's rankings", proc, log)
            wait_for(lambda: ana.label(batch, limit=2), "an assignment for ana", proc, log, timeout=60)
            # 1. killed while it waits: the status shows a stopped run, its labels so far are in the app
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            st = run_status(rd).to_dict()
            assert "stopped" in json.dumps(st), st
            # 2. the same command resumes waiting on the same batch: nothing imported twice
            proc = start_run(rd, tiny_base_dir, db, log)
            wait_for(lambda: status(rd).get("state") == "waiting" and status(rd).get("pid") == proc.pid,
                     "the resumed run waiting", proc, log)
            with sessions() as s:
                names = [b.name for b in s.query(Batch).all()]
                n_items = s.query(Item).join(Batch).filter(Batch.name == batch).count()
            assert names == [batch], names
            assert n_items == 6  # sample.n_prompts: one item per prompt, imported once
            assert ana.label(batch) + ben.label(batch) == 6 - 2  # overlap 1: each item once, 2 done before the kill
            # 3. people compare the final policy with SFT, blinded, at the end
            wait_for(lambda: status(rd).get("stage") == "eval" and status(rd).get("state") == "waiting",
                     "the evaluation batch", proc, log)
            done = 0
            for _ in range(100):
                done += ana.label("proj-eval") + ben.label("proj-eval")
                if done >= 3 or proc.poll() is not None:
                    break
                time.sleep(0.3)  # the batch is imported after the policies answered the prompts
            assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    engine.dispose()
    ranked = read_records(rd / "data" / "rankings-r1.jsonl", "ranking", allow_empty=True)
    assert len(ranked) == 6 and {r.labeler for r in ranked} <= {"ana", "ben"}  # every label once, none doubled
    results = json.loads((rd / "report" / "results.json").read_text())
    assert results["human"]["n_labels"] == 3
    assert set(results["human"]["policies"]) == {"final", "sft", "base"}  # eval.compare, blinded
    html = (rd / "report" / "report.html").read_text()
    assert "people" in html.lower()
    assert run_status(rd).to_dict()["state"] == "done"
