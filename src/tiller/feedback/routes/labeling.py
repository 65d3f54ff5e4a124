"""Labeler pages: home, the ranking, demonstration and clip-comparison forms, the clips themselves, skip."""

from __future__ import annotations

import math
import uuid
from types import SimpleNamespace
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.datastructures import FormData

from tiller.data.formats import MAX_TIME_S, clean_text

from ..deps import CurrentUser, Db
from ..errors import Invalid
from ..models import FLAGS, Assignment, Batch
from ..schemas import ClipChoiceCreate, ClipSide, DbId, DemonstrationCreate, RankingCreate
from ..services import batches, clips, labels
from ..web import render

router = APIRouter()


# --- what a page shows: plain copies with clean text -----------------------------------------------------
# A record stored before the text rule (a lone surrogate in a prompt) cannot be encoded as UTF-8; shown as
# is, it made every page listing it answer 500 for good (issue #15). Pages get copies with such
# characters replaced (U+FFFD); the database keeps what it holds.


def batch_view(b: Batch) -> SimpleNamespace:
    return SimpleNamespace(id=b.id, name=clean_text(b.name), kind=b.kind, overlap=b.overlap)


def assignment_view(a: Assignment) -> SimpleNamespace:
    item = a.item
    return SimpleNamespace(
        id=a.id, status=a.status, user_id=a.user_id, user=SimpleNamespace(name=clean_text(a.user.name)),
        item=SimpleNamespace(external_id=clean_text(item.external_id), prompt=clean_text(item.prompt),
                             responses=clean_text(item.responses), batch_id=item.batch_id),
    )


def batches_view(rows: list[tuple[Batch, dict[str, int]]]) -> list[tuple[SimpleNamespace, dict[str, int]]]:
    return [(batch_view(b), counts) for b, counts in rows]


def next_url(batch_name: str) -> str:
    # surrogatepass: a name stored before the name rule must still make a URL, not a 500
    return f"/label/next?batch={quote(batch_name, errors='surrogatepass')}"


async def form_data(request: Request) -> FormData:
    return await request.form()


Form = Annotated[FormData, Depends(form_data)]


@router.get("/")
def home(request: Request, db: Db, user: CurrentUser) -> Response:
    return render(request, "home.html", {"batches": batches_view(batches.user_batches(db, user))})


@router.get("/label/next")
def next_item(db: Db, user: CurrentUser, batch: str | None = None) -> Response:
    a = batches.next_assignment(db, user, batch)
    return RedirectResponse(f"/assignments/{a.id}" if a else "/?done=1", status_code=303)


PAGES = {"rank": "rank.html", "demo": "demo.html", "clip": "clip.html"}  # the form of each batch kind


@router.get("/assignments/{assignment_id}")
def assignment_page(request: Request, db: Db, user: CurrentUser, assignment_id: DbId) -> Response:
    found = batches.visible_assignment(db, user, assignment_id)
    mine = [s for b, s in batches.user_batches(db, found.user) if b.id == found.item.batch_id]
    a, batch = assignment_view(found), batch_view(found.item.batch)
    ctx = {
        "a": a,
        "item": a.item,
        "batch": batch,
        "flags": FLAGS,
        "idempotency_key": str(uuid.uuid4()),  # one per rendered form: a double submit stores one label
        "editable": a.user_id == user.id and a.status == "pending",
        "counts": mine[0] if mine else {},
    }
    return render(request, PAGES[batch.kind], ctx)


def clip_response(request: Request, db: Db, user: CurrentUser, assignment_id: int, side: int) -> FileResponse:
    """The video of one side of a clip assignment (see :mod:`..services.clips`); range requests work, so a
    browser can seek and loop it. Private: the browser may keep it, no proxy may."""
    path = clips.clip_path(db, user, assignment_id, side, request.app.state.settings.clips_dir)
    return FileResponse(path, media_type="video/mp4", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/assignments/{assignment_id}/clips/{side}")
def clip_video(request: Request, db: Db, user: CurrentUser, assignment_id: DbId, side: ClipSide) -> Response:
    return clip_response(request, db, user, assignment_id, side)


def _form_seconds(form: FormData) -> Any:
    """The page's own timer: a tab left open past the limit counts as the limit, not as an error; a
    value that is not a number goes on to the schema, which refuses it (as the API does)."""
    raw = str(form.get("time_spent_s") or 0)
    try:
        seconds = float(raw)
    except ValueError:
        return raw
    return min(seconds, MAX_TIME_S) if math.isfinite(seconds) else raw


def _parse_form(form: FormData, kind: str, k: int) -> labels.LabelCreate:
    """The form as the API's schema; its checks (text, newlines, numbers) are the API's, one place."""
    time_spent = _form_seconds(form)
    try:
        if kind == "clip":
            return ClipChoiceCreate(choice=str(form.get("choice") or ""), time_spent_s=time_spent)  # type: ignore[arg-type]
        if kind == "demo":
            # Browsers send a textarea's line breaks as CRLF; the schema makes them \n, as for the API.
            return DemonstrationCreate(response=str(form.get("response") or ""), time_spent_s=time_spent)
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
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise Invalid(f"{field}: {err['msg']}") from None


@router.post("/assignments/{assignment_id}")
def submit_form(db: Db, user: CurrentUser, form: Form, assignment_id: DbId) -> Response:
    a = batches.visible_assignment(db, user, assignment_id, write=True)
    batch = a.item.batch.name
    data = _parse_form(form, a.item.batch.kind, len(a.item.responses or []))
    labels.submit_label(db, user, assignment_id, data, str(form.get("idempotency_key") or ""))
    return RedirectResponse(next_url(batch), status_code=303)


@router.post("/assignments/{assignment_id}/skip")
def skip_form(db: Db, user: CurrentUser, assignment_id: DbId) -> Response:
    a = labels.skip_assignment(db, user, assignment_id)
    return RedirectResponse(next_url(a.item.batch.name), status_code=303)
