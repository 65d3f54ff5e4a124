"""Labeler pages: home, the ranking and demonstration forms, skip."""

from __future__ import annotations

import uuid
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from ..deps import CurrentUser, Db
from ..errors import Invalid
from ..models import FLAGS
from ..schemas import DemonstrationCreate, RankingCreate
from ..services import batches, labels
from ..web import render

router = APIRouter()


async def form_data(request: Request) -> FormData:
    return await request.form()


Form = Annotated[FormData, Depends(form_data)]


@router.get("/")
def home(request: Request, db: Db, user: CurrentUser) -> Response:
    return render(request, "home.html", {"batches": batches.user_batches(db, user)})


@router.get("/label/next")
def next_item(db: Db, user: CurrentUser, batch: str | None = None) -> Response:
    a = batches.next_assignment(db, user, batch)
    return RedirectResponse(f"/assignments/{a.id}" if a else "/?done=1", status_code=303)


@router.get("/assignments/{assignment_id}")
def assignment_page(request: Request, db: Db, user: CurrentUser, assignment_id: int) -> Response:
    a = batches.visible_assignment(db, user, assignment_id)
    mine = [s for b, s in batches.user_batches(db, a.user) if b.id == a.item.batch_id]
    ctx = {
        "a": a,
        "item": a.item,
        "batch": a.item.batch,
        "flags": FLAGS,
        "idempotency_key": str(uuid.uuid4()),  # one per rendered form: a double submit stores one label
        "editable": a.user_id == user.id and a.status == "pending",
        "counts": mine[0] if mine else {},
    }
    return render(request, "rank.html" if a.item.batch.kind == "rank" else "demo.html", ctx)


def _parse_form(form: FormData, kind: str, k: int) -> RankingCreate | DemonstrationCreate:
    try:
        time_spent = float(str(form.get("time_spent_s") or 0))
    except ValueError:
        time_spent = 0.0
    if kind == "demo":
        # Browsers submit a textarea's line breaks as CRLF (HTML spec, form submission); training data
        # uses plain newlines, as the JSON API does.
        response = str(form.get("response") or "").replace("\r\n", "\n")
        return DemonstrationCreate(response=response, time_spent_s=time_spent)
    try:
        likert = [int(str(form.get(f"likert_{i}"))) for i in range(k)]
    except ValueError:
        raise Invalid("give every answer a score from 1 to 7") from None
    return RankingCreate(
        ranking=labels.parse_ranking_text(str(form.get("ranking") or ""), k),
        likert=likert,
        flags=[[str(f) for f in form.getlist(f"flags_{i}")] for i in range(k)],
        time_spent_s=time_spent,
    )


@router.post("/assignments/{assignment_id}")
def submit_form(db: Db, user: CurrentUser, form: Form, assignment_id: int) -> Response:
    a = batches.visible_assignment(db, user, assignment_id, write=True)
    batch = a.item.batch.name
    data = _parse_form(form, a.item.batch.kind, len(a.item.responses or []))
    labels.submit_label(db, user, assignment_id, data, str(form.get("idempotency_key") or ""))
    return RedirectResponse(f"/label/next?batch={quote(batch)}", status_code=303)


@router.post("/assignments/{assignment_id}/skip")
def skip_form(db: Db, user: CurrentUser, assignment_id: int) -> Response:
    a = labels.skip_assignment(db, user, assignment_id)
    return RedirectResponse(f"/label/next?batch={quote(a.item.batch.name)}", status_code=303)
