"""Login and logout (cookie session)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from ..deps import Db, check_csrf
from ..security import new_token
from ..services.users import authenticate
from ..web import render

router = APIRouter()


@router.get("/login")
def login_page(request: Request) -> Response:
    return render(request, "login.html")


@router.post("/login", dependencies=[Depends(check_csrf)])
def login(request: Request, db: Db, name: Annotated[str, Form()], password: Annotated[str, Form()]) -> Response:
    ip = request.client.host if request.client else "?"
    if not request.app.state.login_limiter.hit(name.strip().lower(), ip):
        msg = "Too many login attempts; wait a minute and try again."
        return render(request, "login.html", {"error": msg, "name": name}, status_code=429)
    user = authenticate(db, name, password)
    if user is None:
        return render(request, "login.html", {"error": "Wrong name or password.", "name": name}, status_code=401)
    request.session.clear()  # a fresh session (and CSRF token) on every login
    request.session.update({"user_id": user.id, "csrf": new_token()})
    return RedirectResponse("/", status_code=303)


@router.post("/logout", dependencies=[Depends(check_csrf)])
def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
