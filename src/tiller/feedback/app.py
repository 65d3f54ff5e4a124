"""``create_app``: the labeling and playground web app (FastAPI, server-rendered pages, a JSON API)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import make_url
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tiller.asgi import BodyLimit

from .db import init_db, make_engine, session_factory
from .deps import CurrentUser
from .engines import default_engine_factory
from .errors import NotAuthenticated, ServiceError, clean_errors
from .records import RecordError
from .routes import admin, api, auth, labeling, playground
from .security import HashGate, NameBackoff, RateLimiter, load_secret, new_token
from .web import STATIC, render, templates

MiB = 1024 * 1024
UPLOAD_PATHS = ("/admin/batches",)  # the one route that takes a file: batch import (admins)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class AppSettings:
    """What an operator may set (docs/deployment.md); :meth:`from_env` reads the ``TILLER_APP_*`` variables,
    ``tiller app serve`` its flags."""

    secret_file: Path | None = None  # the session signing key's file; None: next to the SQLite file, or
    # ~/.local/share/tiller/ for PostgreSQL ($TILLER_APP_SECRET, when set, wins over any file)
    secure_cookies: bool = False  # the session cookie only over HTTPS (TLS at a reverse proxy)
    max_body: int = 1 * MiB  # bytes of a request body, refused with 413 before anything parses it
    max_upload: int = 32 * MiB  # for a batch file, and only from a logged-in session
    api_docs: bool = False  # /api/docs and /api/openapi.json, to logged-in users only
    hash_slots: int = 2  # argon2 hashes at once (64 MiB each); more logins wait, then get 503
    login_per_ip: tuple[int, float] = (30, 60.0)  # login attempts per address per seconds
    session_max_age_s: int = 14 * 24 * 3600  # a session ends this long after its login, used or not
    runs_dir: Path = Path("runs")  # the run folders /admin/runs lists (`tiller run` writes runs/NAME)
    clips_dir: Path | None = None  # the MP4s of clip batches (CLIP_ID.mp4), served by assignment only

    @classmethod
    def from_env(cls, **overrides: Any) -> AppSettings:
        env: dict[str, Any] = {"secure_cookies": _env_flag("TILLER_APP_HTTPS"), "api_docs": _env_flag("TILLER_APP_API_DOCS")}
        if os.environ.get("TILLER_APP_SECRET_FILE"):
            env["secret_file"] = Path(os.environ["TILLER_APP_SECRET_FILE"])
        if os.environ.get("TILLER_APP_MAX_BODY"):
            env["max_body"] = int(os.environ["TILLER_APP_MAX_BODY"])
        if os.environ.get("TILLER_APP_CLIPS_DIR"):
            env["clips_dir"] = Path(os.environ["TILLER_APP_CLIPS_DIR"])
        return replace(cls(**env), **overrides)


# No inline script or style anywhere: model text can never become code, even if escaping were missed.
CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"


class SecurityHeaders:
    """Pure ASGI middleware (cheaper than ``@app.middleware``): CSP and friends on every response."""

    HEADERS = [
        (b"content-security-policy", CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),
    ]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                own = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in self.HEADERS if h[0] not in own)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def upload_limit(limit: int, upload: int) -> Callable[[Scope], int]:
    """The body limit of a request: ``upload`` for the batch-import route from a signed session with a user
    in it (the body limit runs inside the session middleware), ``limit`` for everything else."""

    def limit_for(scope: Scope) -> int:
        session = scope.get("session") or {}
        if scope["path"] in UPLOAD_PATHS and session.get("user_id") is not None:
            return max(limit, upload)
        return limit
    return limit_for


def too_large(scope: Scope, limit: int) -> tuple[bytes, bytes]:
    """The 413 of :class:`tiller.asgi.BodyLimit`: JSON under /api/, the error page elsewhere."""
    msg = f"The request body is over the limit of {limit} bytes."
    if scope["path"].startswith("/api/"):
        return b"application/json", json.dumps({"detail": msg}).encode()
    page = templates.get_template("error.html").render({"message": msg, "user": None, "csrf_token": ""})
    return b"text/html; charset=utf-8", page.encode()


def default_secret_path(db_url: str) -> Path | None:
    """Where the signing key lives when nobody said: beside a SQLite file (``feedback.db.secret``), or in
    ``$XDG_DATA_HOME/tiller`` (default ``~/.local/share/tiller``), one file per database URL. None for an
    in-memory database (a key for the life of the process)."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            return None
        db = Path(url.database)
        return db.with_name(db.name + ".secret")
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "tiller"
    tag = hashlib.sha256(url.render_as_string(hide_password=True).encode()).hexdigest()[:16]
    return data / f"app-secret-{tag}"


def _secret_key(db_url: str, given: str | None, secret_file: Path | None) -> str:
    """The cookie signing key: given, else $TILLER_APP_SECRET, else the secret file (made 0600 when
    absent). Never the database: whoever reads it must not be able to sign an admin's cookie."""
    if given or os.environ.get("TILLER_APP_SECRET"):
        return given or os.environ["TILLER_APP_SECRET"]
    path = secret_file or default_secret_path(db_url)
    return load_secret(path) if path is not None else new_token()


def _add_api_docs(app: FastAPI) -> None:
    """The OpenAPI schema and Swagger UI, for logged-in users (or API tokens) only."""

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(user: CurrentUser) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/api/docs", include_in_schema=False)
    def docs(user: CurrentUser) -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url="/api/openapi.json", title="tiller app API")
        # Swagger UI is a script from a CDN with an inline bootstrap: allowed on this page alone.
        cdn = "https://cdn.jsdelivr.net"
        page.headers["content-security-policy"] = (
            f"default-src 'self'; script-src 'self' 'unsafe-inline' {cdn}; style-src 'self' {cdn}; "
            "img-src 'self' data: https://fastapi.tiangolo.com; frame-ancestors 'none'")
        return page


def _model_table(models: Sequence[str] | dict[str, str] | None) -> dict[str, str]:
    if isinstance(models, dict):
        return dict(models)
    return {Path(p).name or str(p): str(p) for p in models or ()}


def create_app(
    db_url: str,
    secret_key: str | None = None,
    engine_factory: Callable[[str], Any] | None = None,
    models: Sequence[str] | dict[str, str] | None = None,
    login_limiter: RateLimiter | None = None,
    settings: AppSettings | None = None,
) -> FastAPI:
    """The app on database ``db_url`` (migrated to the newest schema first).

    ``models``: checkpoint directories (or name -> path) offered in the playground; ``engine_factory``:
    ``model_path -> engine`` with ``stream``/``complete`` like ``tiller.serve.engine.ChatEngine``;
    ``login_limiter``: login attempts per client address; ``settings``: default
    :meth:`AppSettings.from_env`."""
    settings = settings or AppSettings.from_env()
    init_db(db_url)
    engine = make_engine(db_url)
    factory = session_factory(engine)
    app = FastAPI(title="tiller app", docs_url=None, openapi_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.db_engine = engine
    app.state.sessions = factory
    app.state.models = _model_table(models)
    app.state.engine_factory = engine_factory or default_engine_factory
    app.state.chat_engines = {}
    app.state.chat_lock = threading.Lock()
    app.state.login_limiter = login_limiter or RateLimiter(*settings.login_per_ip)
    app.state.unknown_names = NameBackoff()
    app.state.hash_gate = HashGate(settings.hash_slots)
    app.state.session_max_age_s = settings.session_max_age_s

    # Last added runs first: security headers, then the session (so BodyLimit can see who is logged in),
    # then the body limit, then the routes.
    app.add_middleware(BodyLimit, limit=upload_limit(settings.max_body, settings.max_upload), refusal=too_large)
    app.add_middleware(
        SessionMiddleware,
        secret_key=_secret_key(db_url, secret_key, settings.secret_file),
        session_cookie="tiller_session",
        max_age=settings.session_max_age_s,
        same_site="lax",
        https_only=settings.secure_cookies,
    )
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        if isinstance(exc, NotAuthenticated):
            return RedirectResponse("/login", status_code=303)
        return render(request, "error.html", {"message": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler echoes each invalid input: a 20 MB answer came back as an 84 MB 422 (issue #15)
        return JSONResponse({"detail": jsonable_encoder(clean_errors(exc.errors()))}, status_code=422)

    @app.exception_handler(RecordError)
    async def record_error(request: Request, exc: RecordError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc), "line": exc.line, "field": exc.field}, status_code=422)
        return render(request, "error.html", {"message": f"Nothing imported. {exc}"}, status_code=422)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if settings.api_docs:
        _add_api_docs(app)
    for module in (auth, labeling, admin, playground, api):
        app.include_router(module.router)
    return app

