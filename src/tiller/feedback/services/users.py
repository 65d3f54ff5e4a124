"""Accounts: creation, password login, API tokens."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from ..db import writing
from ..errors import Conflict, Invalid
from ..models import ROLES, ApiToken, User
from ..security import hash_password, hash_token, new_token, verify_password


def create_user(session: Session, name: str, role: str, password: str) -> User:
    name = name.strip()
    if not name or len(name) > 64 or any(c.isspace() for c in name):
        raise Invalid("user name must be 1-64 characters without spaces")
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if len(password) < 8:
        raise Invalid("password must be at least 8 characters")
    user = User(name=name, role=role, password_hash=hash_password(password), active=True)
    try:
        with writing(session):
            session.add(user)
    except IntegrityError:
        raise Conflict(f"user {name!r} already exists") from None
    return user


def authenticate(session: Session, name: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.name == name.strip()))
    ok = verify_password(user.password_hash if user else None, password)
    return user if ok and user is not None and user.active else None


def create_token(session: Session, user: User) -> str:
    """A new API token for ``user``; the plain token is returned once and only its hash is kept."""
    token = new_token()
    with writing(session):
        session.add(ApiToken(user_id=user.id, token_hash=hash_token(token)))
    return token


def user_by_token(session: Session, token: str) -> User | None:
    q = select(ApiToken).options(joinedload(ApiToken.user)).where(ApiToken.token_hash == hash_token(token))
    row = session.scalar(q)
    return row.user if row is not None and row.user.active else None


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.role, User.name)))
