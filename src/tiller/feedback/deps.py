"""Dependencies every route uses: the database session, the current user, CSRF, admin-only.

Authentication and CSRF are checked here and nowhere else. A request is authenticated either by an API
token (``Authorization: Bearer ...``; never sent by a browser on its own, so no CSRF check) or by the signed
session cookie, in which case any unsafe method must also carry the session's CSRF token in the
``X-CSRF-Token`` header or a ``csrf_token`` form field. A cookie holds only while its ``sv`` equals the
user's ``session_version`` (logout and a password change bump it) and for at most the session lifetime
after its login (``at``), however often it is renewed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from .errors import Forbidden, NotAuthenticated
from .models import User
from .security import new_token, same_token
from .services.users import session_is_current, user_by_token

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass(frozen=True)
class Viewer:
    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = new_token()
    return token


async def check_csrf(request: Request) -> None:
    """Refuse (403) an unsafe request whose CSRF token does not match the session's."""
    if request.method in SAFE_METHODS:
        return
    sent: object = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        sent = (await request.form()).get("csrf_token")
    if not same_token(request.session.get("csrf"), sent if isinstance(sent, str) else None):
        raise Forbidden("missing or wrong CSRF token; reload the page and try again")


async def auth_source(request: Request) -> tuple[str, str | int]:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return "token", auth[7:].strip()
    user_id = request.session.get("user_id")
    if user_id is None:
        raise NotAuthenticated("log in first")
    await check_csrf(request)
    return "session", user_id


def current_user(
    request: Request,
    source: Annotated[tuple[str, str | int], Depends(auth_source)],
    db: Annotated[Session, Depends(get_db)],
) -> User:
    kind, value = source
    user = user_by_token(db, str(value)) if kind == "token" else db.get(User, value)
    if user is None or not user.active:
        raise NotAuthenticated("log in first" if kind == "session" else "invalid API token")
    if kind == "session" and not session_is_current(
        user, request.session.get("sv"), request.session.get("at"), request.app.state.session_max_age_s
    ):
        # logged out, password changed, or older than the session lifetime: the cookie is dead
        request.session.clear()
        raise NotAuthenticated("your session has ended; log in again")
    # For the page header: a plain copy, still readable after the session has closed or rolled back.
    request.state.user = Viewer(user.id, user.name, user.role)
    return user


def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.is_admin:
        raise Forbidden("admins only")
    return user


Db = Annotated[Session, Depends(get_db)]
CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(admin_user)]
