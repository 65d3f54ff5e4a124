"""``create_app``: the labeling and playground web app (FastAPI, server-rendered pages, a JSON API)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .db import init_db, make_engine, session_factory, writing
from .engines import default_engine_factory
from .errors import NotAuthenticated, ServiceError
from .models import Setting
from .records import RecordError
from .routes import admin, api, auth, labeling, playground
from .security import RateLimiter, new_token
from .web import STATIC, render

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
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _secret_key(factory: sessionmaker[Session], given: str | None) -> str:
    """The cookie signing key: given, else $TILLER_APP_SECRET, else one kept in the database."""
    if given or os.environ.get("TILLER_APP_SECRET"):
        return given or os.environ["TILLER_APP_SECRET"]
    with factory() as session, writing(session):
        row = session.get(Setting, "secret_key")
        if row is None:
            row = Setting(key="secret_key", value=new_token())
            session.add(row)
        return row.value


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
) -> FastAPI:
    """The app on database ``db_url`` (migrated to the newest schema first).

    ``models``: checkpoint directories (or name -> path) offered in the playground; ``engine_factory``:
    ``model_path -> engine`` with ``stream``/``complete`` like ``tiller.serve.engine.ChatEngine``."""
    init_db(db_url)
    engine = make_engine(db_url)
    factory = session_factory(engine)
    app = FastAPI(title="tiller app", docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)
    app.state.db_engine = engine
    app.state.sessions = factory
    app.state.models = _model_table(models)
    app.state.engine_factory = engine_factory or default_engine_factory
    app.state.chat_engines = {}
    app.state.chat_lock = threading.Lock()
    app.state.login_limiter = login_limiter or RateLimiter(limit=5, window_s=60.0)

    app.add_middleware(
        SessionMiddleware,
        secret_key=_secret_key(factory, secret_key),
        session_cookie="tiller_session",
        max_age=14 * 24 * 3600,
        same_site="lax",
        https_only=os.environ.get("TILLER_APP_HTTPS", "") == "1",
    )

    app.add_middleware(SecurityHeaders)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        if isinstance(exc, NotAuthenticated):
            return RedirectResponse("/login", status_code=303)
        return render(request, "error.html", {"message": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RecordError)
    async def record_error(request: Request, exc: RecordError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc), "line": exc.line, "field": exc.field}, status_code=422)
        return render(request, "error.html", {"message": f"Nothing imported. {exc}"}, status_code=422)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in (auth, labeling, admin, playground, api):
        app.include_router(module.router)
    return app

