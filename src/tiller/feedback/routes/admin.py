"""Admin pages: import a batch, follow its progress and agreement, download its export, add users."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from ..deps import AdminUser, Db
from ..errors import Invalid
from ..records import parse_lines
from ..services import batches, export, users
from ..web import render

router = APIRouter(prefix="/admin")


def read_upload(file: UploadFile) -> str:
    try:
        return file.file.read().decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(f"{file.filename}: not UTF-8 text") from None


@router.get("/")
def admin_home(request: Request, db: Db, user: AdminUser) -> Response:
    ctx = {"batches": batches.user_batches(db, user), "users": users.list_users(db)}
    return render(request, "admin.html", ctx)


@router.post("/batches")
def import_batch_form(
    db: Db,
    user: AdminUser,
    file: UploadFile,
    name: Annotated[str, Form()],
    kind: Annotated[str, Form()],
    overlap: Annotated[int, Form()],
    labelers: Annotated[str, Form()] = "",
) -> Response:
    items = parse_lines(read_upload(file), kind, source=file.filename or "upload")
    chosen = [x.strip() for x in labelers.split(",") if x.strip()] or None
    batch = batches.import_batch(db, name, kind, overlap, items, chosen)
    return RedirectResponse(f"/admin/batches/{quote(batch.name)}", status_code=303)


@router.get("/batches/{name}")
def batch_page(request: Request, db: Db, user: AdminUser, name: str) -> Response:
    progress = batches.batch_progress(db, name)
    recent = batches.list_assignments(db, user, batch=name, limit=50)
    return render(request, "batch.html", {"p": progress, "recent": recent})


@router.get("/batches/{name}/export.jsonl")
def batch_export(db: Db, user: AdminUser, name: str) -> Response:
    records = list(export.batch_records(db, name))  # read inside the request's session
    headers = {"Content-Disposition": f'attachment; filename="{quote(name)}.jsonl"'}
    return StreamingResponse(export.to_jsonl(iter(records)), media_type="application/x-ndjson", headers=headers)


@router.post("/users")
def create_user_form(
    db: Db,
    user: AdminUser,
    name: Annotated[str, Form()],
    role: Annotated[str, Form()],
    password: Annotated[str, Form()],
) -> Response:
    users.create_user(db, name, role, password)
    return RedirectResponse("/admin/", status_code=303)
