"""Submitting labels: validation, exactly-once storage under retries, skipping.

A submission carries an idempotency key (a UUID the form or client makes once). The key and the
assignment are both unique in ``labels``, so whatever the timing of a double click or a retry, the
database holds one label; the repeat gets the stored label back ("replayed") instead of an error.
"""

from __future__ import annotations

import re

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tiller.data.formats import MAX_TIME_S as MAX_TIME_S  # re-exported: the old home of the limit
from tiller.data.formats import DataError, check_response, check_time

from ..db import end_read, writing
from ..errors import Conflict, Invalid
from ..models import CLIP_RANKINGS, FLAGS, Assignment, Label, User, utcnow
from ..schemas import ClipChoiceCreate, DemonstrationCreate, RankingCreate
from .batches import visible_assignment

LabelCreate = RankingCreate | DemonstrationCreate | ClipChoiceCreate

_KEY = re.compile(r"^[A-Za-z0-9_.:-]{8,64}$")


def check_seconds(value: float) -> float:
    """Time spent, as the schemas check it (finite, 0-MAX_TIME_S): NaN was a false 409 on SQLite (NULL
    in a NOT NULL column) and stored as is on PostgreSQL (issue #15)."""
    try:
        return check_time(value)
    except DataError as e:
        raise Invalid(f"time_spent_s: {e.reason}") from None


def parse_ranking_text(text: str, k: int) -> list[list[int]]:
    """``"2 > 1 = 4 > 3"`` (answers numbered from 1, best first, ``=`` ties) -> ``[[1], [0, 3], [2]]``."""
    groups = []
    for part in text.split(">"):
        try:
            groups.append([int(tok) - 1 for tok in part.split("=")])
        except ValueError:
            raise Invalid(f"ranking {text!r}: write answers as numbers, e.g. '2 > 1 = 3'") from None
    return validate_ranking(groups, k)


def validate_ranking(ranking: list[list[int]], k: int) -> list[list[int]]:
    """Every answer index exactly once, in non-empty groups; ties stay grouped (sorted within a group)."""
    flat = [i for group in ranking for i in group]
    if any(not group for group in ranking) or sorted(flat) != list(range(k)):
        raise Invalid(f"ranking must place each of the {k} answers exactly once, got {ranking}")
    return [sorted(group) for group in ranking]


def _validate(data: LabelCreate, kind: str, k: int) -> dict:
    if kind == "clip":
        if not isinstance(data, ClipChoiceCreate):
            raise Invalid("this item compares two clips: send 'choice' (left, right, equal or cant_tell)")
        return {"choice": data.choice, "ranking": CLIP_RANKINGS[data.choice]}
    if kind == "demo":
        if not isinstance(data, DemonstrationCreate):
            raise Invalid("this item asks for a demonstration: send 'response'")
        if not data.response.strip():
            raise Invalid("the demonstration is empty")
        try:
            return {"response": check_response(data.response)}
        except DataError as e:
            raise Invalid(f"response: {e.reason}") from None
    if not isinstance(data, RankingCreate):
        raise Invalid("this item asks for a ranking: send 'ranking', 'likert' and 'flags'")
    ranking = validate_ranking(data.ranking, k)
    if len(data.likert) != k or any(not 1 <= x <= 7 for x in data.likert):
        raise Invalid(f"likert must give each of the {k} answers a score from 1 to 7")
    flags = data.flags if data.flags is not None else [[] for _ in range(k)]
    if len(flags) != k:
        raise Invalid(f"flags must have one list per answer ({k})")
    for i, fl in enumerate(flags):
        unknown = set(fl) - set(FLAGS)
        if unknown:
            raise Invalid(f"answer {i + 1}: unknown flags {sorted(unknown)}")
    flags = [[f for f in FLAGS if f in set(fl)] for fl in flags]
    return {"ranking": ranking, "likert": list(data.likert), "flags": flags}


def _replay(session: Session, user: User, assignment_id: int, key: str) -> Label | None:
    label = session.scalar(select(Label).where(Label.idempotency_key == key))
    if label is None:
        return None
    if label.assignment_id != assignment_id or label.assignment.user_id != user.id:
        raise Conflict("this idempotency key was already used for another submission")
    return label


def submit_label(
    session: Session, user: User, assignment_id: int, data: LabelCreate, key: str
) -> tuple[Label, bool]:
    """Store the label for an assignment once. Returns (label, replayed)."""
    if not _KEY.match(key or ""):
        raise Invalid("idempotency key must be 8-64 characters of letters, digits, '-', '_', '.', ':'")
    try:
        with writing(session):
            if (label := _replay(session, user, assignment_id, key)) is not None:
                return label, True
            a = visible_assignment(session, user, assignment_id, write=True)
            if a.status != "pending":
                raise Conflict(f"assignment {assignment_id} is already {a.status}")
            fields = _validate(data, a.item.batch.kind, len(a.item.responses or []))
            time_spent = check_seconds(data.time_spent_s)
            label = Label(assignment_id=a.id, idempotency_key=key, time_spent_s=time_spent, **fields)
            session.add(label)
            done = session.execute(
                update(Assignment)
                .where(Assignment.id == a.id, Assignment.status == "pending")
                .values(status="done", updated_at=utcnow())
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]  # a concurrent skip got there first
                raise Conflict(f"assignment {assignment_id} is no longer pending")
        return label, False
    except IntegrityError:
        # A concurrent request with the same key (or for the same assignment) committed first.
        label = _replay(session, user, assignment_id, key)
        end_read(session)
        if label is not None:
            return label, True
        raise Conflict(f"assignment {assignment_id} is already labelled") from None


def skip_assignment(session: Session, user: User, assignment_id: int) -> Assignment:
    """Skip an item (InstructGPT let labelers skip prompts they could not judge); skipping twice is a no-op."""
    with writing(session):
        a = visible_assignment(session, user, assignment_id, write=True)
        if a.status == "done":
            raise Conflict(f"assignment {assignment_id} is already labelled")
        if a.status == "closed":  # its batch went on without it
            raise Conflict(f"assignment {assignment_id} is closed")
        a.status, a.updated_at = "skipped", utcnow()
    return a
