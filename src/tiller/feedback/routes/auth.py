"""Login and logout (cookie session).

A login attempt passes, in order: the per-address limit (cheap, before anything else), a slot of the
hashing gate (at most a few 64 MiB argon2 hashes at once; the wait is on the event loop), then the
per-name backoff and the password check itself (in a worker thread: they touch the database and hash).
"""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ..deps import Db, check_csrf
from ..models import User
from ..security import Busy, new_token
from ..services.users import LoginResult, login_attempt, revoke_sessions
from ..web import render

router = APIRouter()


@router.get("/login")
def login_page(request: Request) -> Response:
    return render(request, "login.html")


def _refuse(request: Request, name: str, msg: str, status: int, retry_after_s: float = 0) -> Response:
    response = render(request, "login.html", {"error": msg, "name": name}, status_code=status)
    if retry_after_s:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return response


def _attempt(request: Request, name: str, password: str) -> LoginResult:
    with request.app.state.sessions() as db:
        return login_attempt(db, name, password, request.app.state.unknown_names)


@router.post("/login", dependencies=[Depends(check_csrf)])
async def login(request: Request, name: Annotated[str, Form()], password: Annotated[str, Form()]) -> Response:
    state = request.app.state
    ip = request.client.host if request.client else "?"  # the proxy's header only when trusted (cli serve)
    if not state.login_limiter.hit(ip):
        wait = state.login_limiter.retry_after(ip)
        msg = f"Too many login attempts from your address; try again in {wait} seconds."
        return _refuse(request, name, msg, 429, wait)
    try:
        async with state.hash_gate.slot():
            result = await run_in_threadpool(_attempt, request, name, password)
    except Busy:
        return _refuse(request, name, "The server is busy with other logins; try again in a moment.", 503, 2)
    if result.wait_s:
        wait = math.ceil(result.wait_s)
        msg = (f"Too many login attempts for this name; try again in {wait} seconds, "
               f"or ask an admin to unlock it (tiller app unlock NAME).")
        return _refuse(request, name, msg, 429, wait)
    if result.user is None:
        return _refuse(request, name, "Wrong name or password.", 401)
    request.session.clear()  # a fresh session (and CSRF token) on every login
    request.session.update({"user_id": result.user.id, "sv": result.user.session_version, "at": int(time.time()),
                            "csrf": new_token()})
    return RedirectResponse("/", status_code=303)


@router.post("/logout", dependencies=[Depends(check_csrf)])
def logout(request: Request, db: Db) -> Response:
    """Ends every session of the user (all their browsers): the cookie's version stops matching."""
    user_id = request.session.get("user_id")
    if isinstance(user_id, int):
        user = db.get(User, user_id)
        if user is not None and request.session.get("sv") == user.session_version:
            revoke_sessions(db, user_id)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
