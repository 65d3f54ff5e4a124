"""Admin pages: import a batch, follow its progress and agreement, download its export, add users, and see
where each `tiller run` stands."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from tiller.data.formats import clean_text
from tiller.status import STATUS_FILE, run_status

from ..deps import AdminUser, Db
from ..errors import Invalid, NotFound
from ..models import BATCH_KINDS
from ..records import parse_lines
from ..services import batches, export, users
from ..web import render
from .labeling import assignment_view, batch_view, batches_view

router = APIRouter(prefix="/admin")


def read_upload(file: UploadFile) -> str:
    try:
        return file.file.read().decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(f"{file.filename}: not UTF-8 text") from None


@router.get("/")
def admin_home(request: Request, db: Db, user: AdminUser) -> Response:
    ctx = {"batches": batches_view(batches.user_batches(db, user)), "users": users.list_users(db)}
    return render(request, "admin.html", ctx)


@router.get("/runs")
def runs_page(request: Request, user: AdminUser) -> Response:
    """Every run folder under the app's ``runs_dir`` (one with a run-config.json or status.json), as `tiller
    status` shows it; a folder that does not exist lists none."""
    root = request.app.state.settings.runs_dir
    folders = sorted(p for p in root.iterdir() if (p / "run-config.json").is_file() or (p / STATUS_FILE).is_file()) \
        if root.is_dir() else []
    runs = [clean_text({**run_status(p).to_dict(), "name": p.name}) for p in folders]
    return render(request, "runs.html", {"runs": runs, "runs_dir": clean_text(str(root))})


@router.post("/batches")
def import_batch_form(
    request: Request,
    db: Db,
    user: AdminUser,
    file: UploadFile,
    name: Annotated[str, Form()],
    kind: Annotated[str, Form()],
    overlap: Annotated[int, Form()],
    labelers: Annotated[str, Form()] = "",
    allow_empty: Annotated[bool, Form()] = False,
) -> Response:
    if kind not in BATCH_KINDS:  # checked first: parse_lines would raise a bare ValueError (a 500)
        raise Invalid(f"task must be one of {', '.join(BATCH_KINDS)}, not {kind!r}")
    clips_dir = request.app.state.settings.clips_dir
    if kind == "clip" and clips_dir is None:
        raise Invalid("this app has no clips folder: start it with `tiller app serve --clips-dir DIR`")
    items = parse_lines(read_upload(file), kind, source=file.filename or "upload", allow_empty=allow_empty,
                        clips_dir=clips_dir)
    chosen = [x.strip() for x in labelers.split(",") if x.strip()] or None
    batch = batches.import_batch(db, name, kind, overlap, items, chosen)
    return RedirectResponse(f"/admin/batches/{quote(batch.name)}", status_code=303)


@router.get("/batches/{name}")
def batch_page(request: Request, db: Db, user: AdminUser, name: str) -> Response:
    progress = batches.batch_progress(db, name)
    recent = [assignment_view(a) for a in batches.list_assignments(db, user, batch=name, limit=50)]
    return render(request, "batch.html", {"p": progress, "batch": batch_view(progress.batch), "recent": recent})


@router.get("/batches/{name}/export.jsonl")
def batch_export(db: Db, user: AdminUser, name: str) -> Response:
    records = list(export.batch_records(db, name))  # read inside the request's session
    headers = {"Content-Disposition": f'attachment; filename="{quote(clean_text(name))}.jsonl"'}
    return StreamingResponse(export.to_jsonl(iter(records)), media_type="application/x-ndjson", headers=headers)


@router.get("/exports/chat-{what}.jsonl")
def chat_export(db: Db, user: AdminUser, what: str, everything: bool = False, real_names: bool = False) -> Response:
    """Playground data (``prompts``, ``comparisons``, ``ratings``): by default only what its author agreed
    to share, under pseudonyms; ``?everything=1`` adds the rest, ``?real_names=1`` shows login names."""
    if what not in export.CHAT_EXPORTS:
        raise NotFound(f"no chat export {what!r} (known: {', '.join(export.CHAT_EXPORTS)})")
    records = list(export.CHAT_EXPORTS[what](db, not everything, real_names))
    headers = {"Content-Disposition": f'attachment; filename="chat-{what}.jsonl"'}
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
