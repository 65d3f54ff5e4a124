"""The JSON API (``/api``): assignments and labels for labelers and scripts, batches for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from tiller.data.formats import clean_text

from ..deps import AdminUser, CurrentUser, Db
from ..errors import Invalid, NotFound
from ..models import Assignment, Label
from ..schemas import (
    AssignmentPublic,
    AssignmentStatus,
    BatchPublic,
    ClipChoiceCreate,
    ClipSide,
    DbId,
    DemonstrationCreate,
    LabelPublic,
    PageSize,
    RankingCreate,
    UserPublic,
)
from ..services import batches, export, labels
from .labeling import clip_response

router = APIRouter(prefix="/api")


def assignment_public(a: Assignment) -> AssignmentPublic:
    item = a.item  # clean_text: a record stored before the text rule still gives a readable answer
    clip = item.batch.kind == "clip"  # its clips by URL: a client never names a clip file
    return AssignmentPublic(
        id=a.id, batch=clean_text(item.batch.name), kind=item.batch.kind, item_id=clean_text(item.external_id),
        status=a.status, labeler=a.user.name, prompt=clean_text(item.prompt),
        responses=None if clip else clean_text(item.responses),
        clips=[f"/api/assignments/{a.id}/clips/{side}" for side in (0, 1)] if clip else None,
    )


def label_public(label: Label, replayed: bool) -> LabelPublic:
    return LabelPublic(
        id=label.id, assignment_id=label.assignment_id, ranking=label.ranking, likert=label.likert,
        flags=label.flags, response=clean_text(label.response), time_spent_s=label.time_spent_s, choice=label.choice,
        replayed=replayed,
    )


@router.get("/me")
def me(user: CurrentUser) -> UserPublic:
    return UserPublic(id=user.id, name=user.name, role=user.role)


@router.get("/assignments")
def list_assignments(
    db: Db, user: CurrentUser, batch: str | None = None, status: AssignmentStatus | None = None, limit: PageSize = 100
) -> list[AssignmentPublic]:
    return [assignment_public(a) for a in batches.list_assignments(db, user, batch, status, limit)]


@router.get("/assignments/next")
def next_assignment(db: Db, user: CurrentUser, batch: str | None = None) -> AssignmentPublic:
    a = batches.next_assignment(db, user, batch)
    if a is None:
        raise NotFound("nothing left to label")
    return assignment_public(a)


@router.get("/assignments/{assignment_id}")
def get_assignment(db: Db, user: CurrentUser, assignment_id: DbId) -> AssignmentPublic:
    return assignment_public(batches.visible_assignment(db, user, assignment_id))


@router.post("/assignments/{assignment_id}/label", status_code=201)
def submit_label(
    db: Db,
    user: CurrentUser,
    assignment_id: DbId,
    body: RankingCreate | DemonstrationCreate | ClipChoiceCreate,
    response: Response,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> LabelPublic:
    key = idempotency_key or body.idempotency_key
    if not key:
        raise Invalid("send an Idempotency-Key header (or 'idempotency_key') so a retry cannot store twice")
    label, replayed = labels.submit_label(db, user, assignment_id, body, key)
    if replayed:
        response.status_code = 200
    return label_public(label, replayed)


@router.get("/assignments/{assignment_id}/clips/{side}")
def clip_video(request: Request, db: Db, user: CurrentUser, assignment_id: DbId, side: ClipSide) -> FileResponse:
    """A clip assignment's video, side 0 (left, a) or 1 (right, b): the assignment's labeler or an admin."""
    return clip_response(request, db, user, assignment_id, side)


@router.post("/assignments/{assignment_id}/skip")
def skip(db: Db, user: CurrentUser, assignment_id: DbId) -> AssignmentPublic:
    return assignment_public(labels.skip_assignment(db, user, assignment_id))


@router.get("/batches/{name}")
def batch_status(db: Db, user: AdminUser, name: str) -> BatchPublic:
    p = batches.batch_progress(db, name)
    agreement = p.agreement
    return BatchPublic(
        name=p.batch.name, kind=p.batch.kind, overlap=p.batch.overlap, items=p.items, assignments=p.counts,
        per_labeler=p.per_labeler, agreement=agreement.agreement if agreement else None,
        compared_pairs=agreement.compared if agreement else 0, tau_b=agreement.tau_b if agreement else None,
    )


@router.get("/batches/{name}/export.jsonl")
def batch_export(db: Db, user: AdminUser, name: str) -> StreamingResponse:
    records = list(export.batch_records(db, name))
    return StreamingResponse(export.to_jsonl(iter(records)), media_type="application/x-ndjson")
