"""Batches: import (all-or-nothing), assignment to labelers, who may see what, progress and agreement."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, joinedload

from tiller.data.agreement import AgreementReport, batch_agreement
from tiller.data.formats import DataError, check_name, check_text

from ..db import writing
from ..errors import Conflict, Forbidden, Invalid, NotFound
from ..models import ASSIGNMENT_STATUSES, BATCH_KINDS, Assignment, Batch, Item, Label, User, utcnow
from ..records import ItemIn
from ..schemas import MAX_DB_ID


def choose_labelers(loads: dict[int, int], order: list[int], n: int) -> list[int]:
    """The ``n`` least-loaded labelers; equal loads go in ``order``, which makes equal loads round-robin."""
    rank = {u: i for i, u in enumerate(order)}
    return sorted(order, key=lambda u: (loads[u], rank[u]))[:n]


def import_batch(
    session: Session, name: str, kind: str, overlap: int, items: list[ItemIn], labelers: list[str] | None = None
) -> Batch:
    """Create batch ``name`` and give each item to ``overlap`` distinct labelers, in one transaction.

    Load counts each labeler's pending assignments in every batch, so a new batch goes first to whoever
    has the least left to do."""
    name = name.strip()
    try:  # the name is a URL path segment and the export's file name (issue #15: 'round1/a', '..')
        check_name(name, "batch name")
    except DataError as e:
        raise Invalid(f"batch name {e.reason}") from None
    if kind not in BATCH_KINDS:
        raise Invalid(f"kind must be one of {', '.join(BATCH_KINDS)}, not {kind!r}")
    with writing(session):
        if session.scalar(select(Batch.id).where(Batch.name == name)) is not None:
            raise Conflict(f"batch {name!r} already exists")
        q = select(User).where(User.role == "labeler", User.active.is_(True)).order_by(User.id)
        people = list(session.scalars(q))
        if labelers:
            unknown = sorted(set(labelers) - {u.name for u in people})
            if unknown:
                raise Invalid(f"not active labelers: {', '.join(unknown)}")
            people = [u for u in people if u.name in set(labelers)]
        if not 1 <= overlap <= len(people):
            raise Invalid(f"overlap must be between 1 and the number of labelers ({len(people)}), not {overlap}")
        loads = {u.id: 0 for u in people}
        pending = (
            select(Assignment.user_id, func.count())
            .where(Assignment.status == "pending", Assignment.user_id.in_(loads))
            .group_by(Assignment.user_id)
        )
        for user_id, count in session.execute(pending):
            loads[user_id] = count
        batch = Batch(name=name, kind=kind, overlap=overlap)
        session.add(batch)
        rows = [
            Item(batch=batch, external_id=it.id, position=i, prompt=it.prompt, responses=it.responses, meta=it.meta)
            for i, it in enumerate(items)
        ]
        session.add_all(rows)
        session.flush()
        order = [u.id for u in people]
        assignments: list[dict[str, Any]] = []
        for item in rows:
            for user_id in choose_labelers(loads, order, overlap):
                loads[user_id] += 1
                assignments.append({"item_id": item.id, "user_id": user_id, "status": "pending", "updated_at": utcnow()})
        session.execute(insert(Assignment), assignments)
    return batch


def _storable(name: str) -> bool:
    """Whether a batch could have this name: one holding a NUL or a lone surrogate matches nothing, and is
    not sent to the database (PostgreSQL would refuse the query itself, SQLite would answer it)."""
    try:
        check_text(name)
    except DataError:
        return False
    return True


def get_batch(session: Session, name: str) -> Batch:
    batch = session.scalar(select(Batch).where(Batch.name == name)) if _storable(name) else None
    if batch is None:
        raise NotFound(f"no batch named {name!r}")
    return batch


def visible_assignment(session: Session, user: User, assignment_id: int, write: bool = False) -> Assignment:
    """The one permission check for assignments: a labeler sees only their own (others are 404, as if
    they did not exist); an admin sees all but labels only their own (403)."""
    if not 1 <= assignment_id <= MAX_DB_ID:  # past PostgreSQL's INTEGER: no such row on either database
        raise NotFound(f"no assignment {assignment_id}")
    a = session.get(
        Assignment, assignment_id, options=[joinedload(Assignment.item).joinedload(Item.batch), joinedload(Assignment.user)]
    )
    if a is None or (not user.is_admin and a.user_id != user.id):
        raise NotFound(f"no assignment {assignment_id}")
    if write and a.user_id != user.id:
        raise Forbidden("only the assigned labeler can label or skip this item")
    return a


def list_assignments(
    session: Session, user: User, batch: str | None = None, status: str | None = None, limit: int = 100
) -> list[Assignment]:
    if not 1 <= limit <= 1000:
        raise Invalid(f"limit must be 1-1000, not {limit}")
    if status and status not in ASSIGNMENT_STATUSES:
        raise Invalid(f"status must be one of {', '.join(ASSIGNMENT_STATUSES)}, not {status!r}")
    q = select(Assignment).join(Assignment.item).join(Item.batch).options(joinedload(Assignment.item))
    if not user.is_admin:
        q = q.where(Assignment.user_id == user.id)
    if batch:
        if not _storable(batch):
            return []
        q = q.where(Batch.name == batch)
    if status:
        q = q.where(Assignment.status == status)
    return list(session.scalars(q.order_by(Batch.id, Item.position, Assignment.id).limit(limit)))


def next_assignment(session: Session, user: User, batch: str | None = None) -> Assignment | None:
    q = (
        select(Assignment)
        .options(joinedload(Assignment.item).joinedload(Item.batch), joinedload(Assignment.user))
        .join(Assignment.item)
        .join(Item.batch)
        .where(Assignment.user_id == user.id, Assignment.status == "pending")
    )
    if batch:
        if not _storable(batch):
            return None
        q = q.where(Batch.name == batch)
    return session.scalar(q.order_by(Batch.id, Item.position).limit(1))


@dataclass
class BatchProgress:
    batch: Batch
    counts: dict[str, int] = field(default_factory=dict)  # status -> assignments
    per_labeler: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> status -> n
    items: int = 0
    agreement: AgreementReport | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> bool:
        return self.counts.get("pending", 0) == 0


def batch_progress(session: Session, name: str, with_agreement: bool = True) -> BatchProgress:
    batch = get_batch(session, name)
    progress = BatchProgress(batch=batch)
    progress.items = session.scalar(select(func.count()).select_from(Item).where(Item.batch_id == batch.id)) or 0
    q = (
        select(User.name, Assignment.status, func.count())
        .join(Assignment.user)
        .join(Assignment.item)
        .where(Item.batch_id == batch.id)
        .group_by(User.name, Assignment.status)
    )
    for user_name, status, n in session.execute(q):
        progress.counts[status] = progress.counts.get(status, 0) + n
        progress.per_labeler.setdefault(user_name, {})[status] = n
    if with_agreement and batch.kind in ("rank", "clip"):  # a clip choice is a ranking of K=2 (models.CLIP_RANKINGS)
        rankings: dict[str, dict[str, Any]] = defaultdict(dict)
        rows = (
            select(Item.external_id, User.name, Label.ranking)
            .join(Label.assignment)
            .join(Assignment.item)
            .join(Assignment.user)
            .where(Item.batch_id == batch.id)
        )
        for item_id, user_name, ranking in session.execute(rows):
            if ranking is not None:  # a can't-tell answer orders nothing
                rankings[item_id][user_name] = ranking
        progress.agreement = batch_agreement(rankings)
    return progress


def user_batches(session: Session, user: User) -> list[tuple[Batch, dict[str, int]]]:
    """Batches with assignments for ``user`` (all batches for an admin), with counts by status."""
    q = select(Batch, Assignment.status, func.count()).join(Batch.items).join(Assignment, Assignment.item_id == Item.id)
    if not user.is_admin:
        q = q.where(Assignment.user_id == user.id)
    out: dict[int, tuple[Batch, dict[str, int]]] = {}
    for batch, status, n in session.execute(q.group_by(Batch.id, Assignment.status).order_by(Batch.id)):
        out.setdefault(batch.id, (batch, {}))[1][status] = n
    return list(out.values())
