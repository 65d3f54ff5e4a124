"""``tiller label --labeler app``: import the samples as a batch once, wait for people until the round's rule
(``min_done``, ``min_agreement``) lets it go on, export their rankings; and ``--labeler judge``, a pairwise AI
judge behind a real `tiller serve`.

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

from tiller.config import ConfigError, from_dict  # noqa: E402
from tiller.feedback.errors import NotFound  # noqa: E402
from tiller.feedback.models import Assignment, Batch, Item, User  # noqa: E402
from tiller.feedback.schemas import RankingCreate  # noqa: E402
from tiller.feedback.services.batches import get_batch, list_assignments  # noqa: E402
from tiller.feedback.services.labels import skip_assignment, submit_label  # noqa: E402
from tiller.feedback.services.users import create_user  # noqa: E402
from tiller.labelers import LabelConfig, copeland, label  # noqa: E402

pytestmark = pytest.mark.usefixtures("cheap_argon2")
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


# -- the round's rule: label.min_done and label.min_agreement ----------------------------------------------


def statuses(sessions: Any) -> dict[str, int]:
    with sessions() as s:
        rows = s.execute(select(Assignment.status, func.count()).group_by(Assignment.status))
        return {status: n for status, n in rows}


def test_min_done_below_one_goes_on_early_and_closes_the_rest(
    db: tuple[str, Any], samples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """min_done 0.5 of 6 assignments: the round goes on at the 3rd ranking; the 3 left are closed, never handed
    out again, refused if labeled or skipped, and not exported. A rerun exports the same, importing nothing."""
    from tiller.feedback.errors import Conflict
    from tiller.feedback.services.batches import next_assignment
    from tiller.feedback.services.export import batch_records

    url, sessions = db
    cfg = LabelConfig(labeler="app", db=url, batch=BATCH, overlap=2, poll_s=0.02, timeout_s=60, min_done=0.5)
    out = tmp_path / "rankings.jsonl"
    thread, result = start_label(cfg, samples, out)
    wait_for_batch(sessions, thread, result)
    with sessions() as s:
        todo = {(u.name, sid): aid for u, aid, sid in pending(s, "ana") + pending(s, "ben")}
    rank(sessions, "ana", todo[("ana", "p0")], "p0")
    rank(sessions, "ben", todo[("ben", "p0")], "p0")
    time.sleep(0.3)  # 15 polls at 2 of 6 done (3 needed): still waiting
    assert thread.is_alive() and "error" not in result and not out.exists()
    rank(sessions, "ana", todo[("ana", "p1")], "p1")
    thread.join(timeout=30)
    assert not thread.is_alive() and "error" not in result, result.get("error")
    assert statuses(sessions) == {"done": 3, "closed": 3}
    assert result["metrics"]["rankings"] == 3 and result["metrics"]["app/closed"] == 3
    assert result["metrics"]["app/done"] == 3 and result["metrics"]["app/assignments"] == 6
    # p0 (the one item ranked twice): pair (0,1) ordered oppositely, (0,2) tied by ben, (1,2) alike: 1 of 2
    assert result["metrics"]["data/labeler_agreement"] == 0.5
    assert "closed the 3 assignments still pending" in capsys.readouterr().out
    records = read_out(out)
    assert sorted((r["id"], r["labeler"]) for r in records) == [("p0", "ana"), ("p0", "ben"), ("p1", "ana")]

    closed = [aid for key, aid in todo.items() if key not in {("ana", "p0"), ("ben", "p0"), ("ana", "p1")}]
    with sessions() as s:
        for name in ("ana", "ben"):
            user = s.scalar(select(User).where(User.name == name))
            assert next_assignment(s, user) is None and next_assignment(s, user, BATCH) is None
            assert list_assignments(s, user, batch=BATCH, status="pending") == []
        admin_view = create_user(s, "root", "admin", "correct horse")
        assert sorted(a.id for a in list_assignments(s, admin_view, batch=BATCH, status="closed")) == sorted(closed)
        assert len(list(batch_records(s, BATCH))) == 3
        ben = s.scalar(select(User).where(User.name == "ben"))
        aid = todo[("ben", "p1")]
        with pytest.raises(Conflict, match="is closed"):
            skip_assignment(s, ben, aid)
        data = RankingCreate(ranking=CHOICES[("p1", "ben")], likert=LIKERT["ben"], time_spent_s=1.0)
        with pytest.raises(Conflict, match="already closed"):
            submit_label(s, ben, aid, data, key=uuid.uuid4().hex)
    assert statuses(sessions) == {"done": 3, "closed": 3}

    before = counts(sessions)
    metrics = label(cfg, samples, tmp_path / "again.jsonl")  # the batch exists: checked again, not imported
    assert counts(sessions) == before == (1, 3, 6)
    assert "imported" not in capsys.readouterr().out
    assert metrics["rankings"] == 3 and metrics["app/closed"] == 0 and read_out(tmp_path / "again.jsonl") == records


# Six sets of three answers, ranked by both labelers: ben reverses ana on p0-p3 (0 of 3 pairs agree) and
# matches her on p4 and p5 (3 of 3): 6 of 18 ordered pairs agree, 33.3%, on 6 shared items.
SIX = [{"id": f"q{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}], "responses": ["x", "y", "z"]}
       for i in range(6)]
ANA, REVERSED = [[0], [1], [2]], [[2], [1], [0]]


def test_min_agreement_not_met_stops_with_a_clear_error_and_a_rerun_rechecks(db: tuple[str, Any], tmp_path: Path) -> None:
    from tiller.labelers import LabelRuleError

    url, sessions = db
    samples = tmp_path / "six.jsonl"
    samples.write_text("".join(json.dumps(s) + "\n" for s in SIX), encoding="utf-8")
    cfg = LabelConfig(labeler="app", db=url, batch=BATCH, overlap=2, poll_s=0.02, timeout_s=60, min_agreement=0.5)
    out = tmp_path / "rankings.jsonl"
    thread, result = start_label(cfg, samples, out)
    wait_for_batch(sessions, thread, result)

    def give(name: str, aid: int, sid: str) -> None:
        with sessions() as s:
            user = s.scalar(select(User).where(User.name == name))
            ranking = REVERSED if name == "ben" and sid in ("q0", "q1", "q2", "q3") else ANA
            submit_label(s, user, aid, RankingCreate(ranking=ranking, likert=[5, 4, 3]), key=uuid.uuid4().hex)

    with sessions() as s:
        todo = pending(s, "ana") + pending(s, "ben")
    assert len(todo) == 12
    *first, last = sorted(todo, key=lambda t: (t[2], t[0].name))  # ben on q5 last
    for user, aid, sid in first:
        give(user.name, aid, sid)
    # 5 shared items (q0-q4) at 3/15 = 20% and one assignment pending: low so far, but it waits for the rest
    time.sleep(0.3)
    assert thread.is_alive() and "error" not in result and not out.exists()
    give(last[0].name, last[1], last[2])
    thread.join(timeout=30)
    assert not thread.is_alive()
    error = result.get("error")
    assert isinstance(error, LabelRuleError) and isinstance(error, ConfigError)
    msg = str(error)
    assert "\n" not in msg
    assert msg.startswith(f"labelers of batch {BATCH!r} ({url}) agree on 33.3% of 18 answer pairs over 6 shared items, "
                          "below label.min_agreement 0.5; review the batch in the app's admin page "
                          f"(/admin/batches/{BATCH})")
    assert "more labelers or overlap" in msg and "lower label.min_agreement and rerun" in msg
    assert not out.exists() and counts(sessions) == (1, 6, 12)

    # Lowered: the same batch is checked again (33.3% >= 0.3) and exported, nothing imported or closed.
    lowered = LabelConfig(labeler="app", db=url, batch=BATCH, overlap=2, poll_s=0.02, timeout_s=5, min_agreement=0.3)
    metrics = label(lowered, samples, out)
    assert counts(sessions) == (1, 6, 12) and statuses(sessions) == {"done": 12}
    assert metrics["rankings"] == 12 and metrics["data/labeler_agreement"] == pytest.approx(1 / 3)
    assert len(read_out(out)) == 12


def test_min_agreement_is_not_checked_on_too_few_shared_items(db: tuple[str, Any], samples: Path, tmp_path: Path) -> None:
    """Three shared items (fewer than tiller.status.MIN_SHARED_ITEMS) measure nothing: the round goes on."""
    url, sessions = db
    cfg = LabelConfig(labeler="app", db=url, batch=BATCH, overlap=2, poll_s=0.02, timeout_s=60, min_agreement=0.99)
    thread, result = start_label(cfg, samples, tmp_path / "rankings.jsonl")
    wait_for_batch(sessions, thread, result)
    with sessions() as s:
        todo = pending(s, "ana") + pending(s, "ben")
    for user, aid, sid in todo:
        rank(sessions, user.name, aid, sid)  # CHOICES: ana and ben agree on 3 of 4 ordered pairs
    thread.join(timeout=30)
    assert not thread.is_alive() and "error" not in result, result.get("error")
    assert result["metrics"]["rankings"] == 6


def test_rule_settings_are_checked() -> None:
    for bad in ({"min_done": 0.0}, {"min_done": 1.5}, {"min_agreement": -0.1}, {"min_agreement": 2.0},
                {"judge_timeout": 0.0}):
        with pytest.raises(ConfigError):
            from_dict(LabelConfig, {"labeler": "app", **bad})


# -- label.labeler: judge (RL from AI feedback) against a real `tiller serve` -----------------------------

# The judge is tests/helpers.first_token_judge: shown answer A first, it says A when A starts with "+", B when
# it starts with "-", and "????????" (not a verdict) when it starts with "?".
TEMPLATE = "{{ answer_a }}\n\nThe other answer: {{ answer_b }}\n\nQuestion: {{ prompt }}\nWhich is better, A or B?"
JUDGED = [
    # (0,1): +/- -> A then B: 0 wins. (0,2): both + -> A, A: a tie. (1,2): -/+ -> B, A: 2 wins.
    # Copeland: 0: 1 + 0.5, 1: 0, 2: 0.5 + 1 -> [[0, 2], [1]]
    {"id": "j0", "prompt": [{"role": "user", "content": "Name a colour."}], "responses": ["+ Red.", "- Blue.", "+ Green."]},
    # (0,1) and (0,2): answer 0 shown first gets "????????": no verdict, so ties (2 replies, 2 pairs counted);
    # (1,2): 2 wins. 0: 0.5 + 0.5, 1: 0.5 + 0, 2: 0.5 + 1 -> [[2], [0], [1]]
    {"id": "j1", "prompt": [{"role": "user", "content": "2 + 2?"}], "responses": ["? 4", "- 5", "+ 6"]},
    # every order says B: ties all round -> [[0, 1, 2]]
    {"id": "j2", "prompt": "Hi?", "responses": ["- Hello!", "- Hi.", "- Good day."]},
]


@pytest.fixture(scope="module")
def first_token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """(URL of a live `tiller serve` over the first-token judge, the messages it was asked)."""
    from helpers import first_token_judge, served_model

    path = first_token_judge(tmp_path_factory.mktemp("first-token-judge"))
    asked: list[str] = []
    with served_model(path, "tiny-first") as (url, engine):
        stream = engine.stream

        def recording(messages: Any, *args: Any, **kwargs: Any) -> Any:
            asked.append(messages[-1]["content"])
            return stream(messages, *args, **kwargs)

        engine.stream = recording
        yield url, asked


def test_judge_ranks_by_pairwise_wins_and_counts_unparsable_pairs_as_ties(
    first_token_server: tuple[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, asked = first_token_server
    asked.clear()
    samples, template, out = tmp_path / "samples.jsonl", tmp_path / "judge.j2", tmp_path / "rankings.jsonl"
    samples.write_text("".join(json.dumps(s) + "\n" for s in JUDGED), encoding="utf-8")
    template.write_text(TEMPLATE, encoding="utf-8")
    cfg = LabelConfig(labeler="judge", judge=f"openai:{url}", judge_template=str(template), judge_timeout=30)
    metrics = label(cfg, samples, out)
    records = read_out(out)
    assert [(r["id"], r["ranking"]) for r in records] == [("j0", [[0, 2], [1]]), ("j1", [[2], [0], [1]]),
                                                         ("j2", [[0, 1, 2]])]
    assert {r["labeler"] for r in records} == {"judge:tiny-first"}  # the model the server names
    assert [r["responses"] for r in records] == [s["responses"] for s in JUDGED]
    assert {k: metrics[k] for k in metrics if k.startswith("judge/")} == {
        "judge/pairs": 9, "judge/questions": 18, "judge/unparsable_replies": 2, "judge/tied_unparsable_pairs": 2}
    assert metrics["rankings"] == 3 and metrics["sets"] == 3
    assert "2 of 18 replies were not A, B or tie; their 2 pairs count as ties (e.g. '????????')" in capsys.readouterr().out
    # both orders of every pair reached the server, each once
    j0 = JUDGED[0]["responses"]
    assert len(asked) == 18 and len(set(asked)) == 18
    assert asked.count(TEMPLATE.replace("{{ answer_a }}", j0[1]).replace("{{ answer_b }}", j0[0])
                       .replace("{{ prompt }}", "Name a colour.")) == 1


def test_judge_labeler_needs_a_judge(tmp_path: Path, samples: Path) -> None:
    with pytest.raises(ConfigError, match=r"labeler=judge needs judge=openai:URL\[:MODEL\]"):
        label(LabelConfig(labeler="judge"), samples, tmp_path / "rankings.jsonl")
    assert not (tmp_path / "rankings.jsonl").exists()


def test_copeland_by_hand() -> None:
    # 0 beats 1 and 3, ties 2; 1 ties 3, loses to 2; 2 beats 3: scores 2.5, 0.5, 2.5, 0.5
    outcomes = {(0, 1): 1.0, (0, 2): 0.5, (0, 3): 1.0, (1, 2): 0.0, (1, 3): 0.5, (2, 3): 1.0}
    assert copeland(4, outcomes) == [[0, 2], [1, 3]]
    assert copeland(2, {(0, 1): 0.0}) == [[1], [0]]
    assert copeland(3, {(0, 1): 0.5, (0, 2): 0.5, (1, 2): 0.5}) == [[0, 1, 2]]
