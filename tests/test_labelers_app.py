"""``tiller label --labeler app``: import the samples as a batch once, wait for people, export their rankings.

People are played by the service layer (``submit_label`` / ``skip_assignment``) on a temporary SQLite
database while :func:`tiller.labelers.label` waits in a background thread."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")
pytest.importorskip("argon2")

from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from tiller.config import ConfigError  # noqa: E402
from tiller.feedback.db import init_db, make_engine, session_factory  # noqa: E402
from tiller.feedback.errors import NotFound  # noqa: E402
from tiller.feedback.models import Assignment, Batch, Item, User  # noqa: E402
from tiller.feedback.schemas import RankingCreate  # noqa: E402
from tiller.feedback.services.batches import get_batch, list_assignments  # noqa: E402
from tiller.feedback.services.labels import skip_assignment, submit_label  # noqa: E402
from tiller.feedback.services.users import create_user  # noqa: E402
from tiller.labelers import LabelConfig, label  # noqa: E402

BATCH = "round1"
SETS = [
    {"id": "p0", "prompt": [{"role": "user", "content": "Name a colour."}], "responses": ["Red.", "Blue.", "Green."],
     "policy": "sft-1"},
    {"id": "p1", "prompt": [{"role": "user", "content": "2 + 2?"}], "responses": ["4", "5", ""]},  # empty sample
    {"id": "p2", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
     "responses": ["Hello!", "Hi.", "Good day."]},
]
# What each labeler submits for each set (best first; inner lists are ties), chosen by hand.
CHOICES = {
    ("p0", "ana"): [[0], [1], [2]], ("p0", "ben"): [[1], [0, 2]],
    ("p1", "ana"): [[0], [1], [2]], ("p1", "ben"): [[0], [1, 2]],
    ("p2", "ana"): [[2], [0], [1]], ("p2", "ben"): [[0, 1, 2]],
}
LIKERT = {"ana": [5, 3, 1], "ben": [2, 6, 4]}


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 at its production cost is ~0.5 s a hash; these tests never log in, so the minimal cost will do."""
    from argon2 import PasswordHasher

    from tiller.feedback import security

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """(db URL, session factory) of a fresh SQLite database with labelers ana and ben."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    init_db(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    with sessions() as s:
        create_user(s, "ana", "labeler", "correct horse")
        create_user(s, "ben", "labeler", "correct horse")
    yield url, sessions
    engine.dispose()


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in SETS), encoding="utf-8")
    return path


def start_label(cfg: LabelConfig, samples: Path, out: Path) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["metrics"] = label(cfg, samples, out)
        except BaseException as e:  # noqa: BLE001  # handed to the test thread
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def wait_for_batch(sessions: Any, thread: threading.Thread, result: dict[str, Any]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert "error" not in result, result.get("error")
        with sessions() as s:
            try:
                get_batch(s, BATCH)
                return
            except NotFound:
                pass
        assert thread.is_alive(), result
        time.sleep(0.02)
    pytest.fail(f"label() did not import batch {BATCH!r} within 30 s")


def pending(s: Session, name: str) -> list[tuple[User, int, str]]:
    """(labeler, assignment id, sample id) of every pending assignment of ``name``'s batch."""
    user = s.scalar(select(User).where(User.name == name))
    assert user is not None
    return [(user, a.id, a.item.external_id) for a in list_assignments(s, user, batch=BATCH, status="pending")]


def rank(sessions: Any, name: str, assignment_id: int, set_id: str) -> None:
    with sessions() as s:
        user = s.scalar(select(User).where(User.name == name))
        data = RankingCreate(ranking=CHOICES[(set_id, name)], likert=LIKERT[name], time_spent_s=3.0)
        _, replayed = submit_label(s, user, assignment_id, data, key=uuid.uuid4().hex)
        assert not replayed


def counts(sessions: Any) -> tuple[int, int, int]:
    with sessions() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Batch, Item, Assignment))  # type: ignore[return-value]


def read_out(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_label_app_waits_for_every_assignment_then_exports(
    db: tuple[str, Any], samples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, sessions = db
    cfg = LabelConfig(labeler="app", db=url, batch=BATCH, overlap=2, poll_s=0.02, timeout_s=60)
    out = tmp_path / "rankings.jsonl"
    thread, result = start_label(cfg, samples, out)
    wait_for_batch(sessions, thread, result)

    with sessions() as s:
        todo = pending(s, "ana") + pending(s, "ben")
    # overlap 2 with two labelers: each of the 3 sets goes to both
    assert sorted((u.name, sid) for u, _, sid in todo) == sorted((n, sid) for sid, n in CHOICES)
    *first, last = todo
    for user, aid, sid in first:
        rank(sessions, user.name, aid, sid)
    time.sleep(0.3)  # 15 polls: one assignment is still pending, so label() must still be waiting
    assert thread.is_alive() and "error" not in result and not out.exists()
    rank(sessions, last[0].name, last[1], last[2])
    thread.join(timeout=30)
    assert not thread.is_alive(), "label() kept waiting after the last assignment was done"
    assert "error" not in result, result.get("error")
    assert result["metrics"]["rankings"] == 6 and result["metrics"]["sets"] == 3
    assert "imported" in capsys.readouterr().out

    records = read_out(out)
    assert len(records) == 6
    assert {(r["id"], r["labeler"]): r["ranking"] for r in records} == CHOICES
    by_id = {s["id"]: s for s in SETS}
    for r in records:
        assert r["prompt"] == by_id[r["id"]]["prompt"] and r["responses"] == by_id[r["id"]]["responses"]
        assert r["likert"] == LIKERT[r["labeler"]]
    before = counts(sessions)
    assert before == (1, 3, 6)

    # Same batch name again: no second import; everything is already done, so it exports at once.
    out2 = tmp_path / "again.jsonl"
    t0 = time.monotonic()
    metrics = label(cfg, samples, out2)
    assert time.monotonic() - t0 < 10
    assert counts(sessions) == before
    assert "imported" not in capsys.readouterr().out
    assert metrics["rankings"] == 6 and read_out(out2) == records


def test_label_app_counts_skipped_assignments_as_finished(db: tuple[str, Any], samples: Path, tmp_path: Path) -> None:
    url, sessions = db
    cfg = LabelConfig(labeler="app", db=url, batch=BATCH, overlap=1, poll_s=0.02, timeout_s=60)
    out = tmp_path / "rankings.jsonl"
    thread, result = start_label(cfg, samples, out)
    wait_for_batch(sessions, thread, result)
    with sessions() as s:
        todo = pending(s, "ana") + pending(s, "ben")
    assert sorted(sid for _, _, sid in todo) == ["p0", "p1", "p2"]  # overlap 1: each set once
    (user, aid, sid), *rest = todo
    with sessions() as s:
        skip_assignment(s, s.get(User, user.id), aid)
    for u, a, i in rest:
        rank(sessions, u.name, a, i)
    thread.join(timeout=30)
    assert not thread.is_alive() and "error" not in result, result.get("error")
    records = read_out(out)
    assert sorted(r["id"] for r in records) == sorted(i for _, _, i in rest)
    assert result["metrics"]["rankings"] == 2


def test_label_app_times_out_when_nobody_labels(db: tuple[str, Any], samples: Path, tmp_path: Path) -> None:
    url, sessions = db
    cfg = LabelConfig(labeler="app", db=url, batch=BATCH, overlap=2, poll_s=0.02, timeout_s=0.3)
    out = tmp_path / "rankings.jsonl"
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="6 pending"):
        label(cfg, samples, out)
    assert 0.3 <= time.monotonic() - t0 < 10
    assert not out.exists()
    assert counts(sessions) == (1, 3, 6)  # the batch stays imported, for the next call to wait on


def test_label_app_without_enough_labelers_is_a_config_error(db: tuple[str, Any], samples: Path, tmp_path: Path) -> None:
    url, sessions = db
    cfg = LabelConfig(labeler="app", db=url, batch=BATCH, overlap=3, poll_s=0.02, timeout_s=1)
    with pytest.raises(ConfigError, match=r"overlap must be between 1 and the number of labelers \(2\), not 3"):
        label(cfg, samples, tmp_path / "rankings.jsonl")
    assert counts(sessions) == (0, 0, 0)
