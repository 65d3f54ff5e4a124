"""Accounts: creation (with name rules), password login with a per-name backoff, session revocation,
API tokens."""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from ..db import end_read, writing
from ..errors import Conflict, Invalid, NotFound
from ..models import ROLES, ApiToken, User, utcnow
from ..security import NameBackoff, backoff_s, hash_password, hash_token, new_token, verify_password

NAME_PUNCTUATION = set("._-@+")


def name_key(name: str) -> str:
    """What two names must not share: NFKC, casefolded, NFKC again (Unicode's NFKC_Casefold, near
    enough), so ``Ana``, ``ANA`` and ``ａｎａ`` (full width) are one name."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name.strip()).casefold())


# Scripts that one language writes together (Japanese) count as one.
_SAME_SCRIPT = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "HALFWIDTH": "CJK", "HANGUL": "CJK"}


def _script(ch: str) -> str:
    """The script of a letter from its Unicode name's first word (LATIN, CYRILLIC, GREEK, CJK...)."""
    word = unicodedata.name(ch, "UNKNOWN").split(" ")[0]
    return _SAME_SCRIPT.get(word, word)


def check_name(name: str, allow_unicode: bool = False) -> str:
    """The name a user is stored under (NFKC of ``name``), or Invalid.

    Look-alikes (issue #15, item 9): a full confusable skeleton (Unicode TS #39) needs Unicode's
    confusables table, which the standard library lacks. So by default a name is ASCII letters, digits
    and ``._-@+``: no two such names look the same except by case, which ``name_key`` makes one. With
    ``allow_unicode`` any letters and digits are allowed, but all the letters of a name must come from one
    script (``ana`` with a Cyrillic ``а`` is refused). Invisible and format characters (category Cf:
    zero-width space and joiners, bidi controls), control characters and every separator are always
    refused."""
    name = unicodedata.normalize("NFKC", name.strip())
    if not name or len(name) > 64:
        raise Invalid("user name must be 1-64 characters")
    for ch in name:
        cat = unicodedata.category(ch)
        if cat[0] in "CZ" or ch.isspace():  # Cc Cf Co Cn Cs, Zs Zl Zp
            raise Invalid(f"user name contains an invisible, control or space character (U+{ord(ch):04X})")
        if not (ch.isalnum() or ch in NAME_PUNCTUATION):
            raise Invalid(f"user name may use letters, digits and {''.join(sorted(NAME_PUNCTUATION))}, not {ch!r}")
        if not allow_unicode and not ch.isascii():
            raise Invalid(f"user name must be ASCII (U+{ord(ch):04X} is not); an admin can allow Unicode names")
    scripts = {_script(ch) for ch in name if ch.isalpha()}
    if len(scripts) > 1:
        raise Invalid(f"user name mixes scripts ({', '.join(sorted(scripts))}): it could pass for another")
    if len(name_key(name)) > 64:
        raise Invalid("user name must be 1-64 characters")
    return name


def check_password(password: str) -> None:
    if len(password) < 8:
        raise Invalid("password must be at least 8 characters")


def create_user(session: Session, name: str, role: str, password: str, allow_unicode: bool = False) -> User:
    name = check_name(name, allow_unicode)
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    check_password(password)
    key = name_key(name)
    user = User(name=name, name_key=key, role=role, password_hash=hash_password(password), active=True)
    try:
        with writing(session):
            clash = session.scalar(select(User.name).where(or_(User.name_key == key, User.name == name)))
            if clash is not None:
                raise Conflict(f"user {name!r} already exists" if clash == name
                               else f"user {name!r} would look like the existing user {clash!r}")
            session.add(user)
    except IntegrityError:
        raise Conflict(f"user {name!r} already exists") from None
    return user


def user_by_name(session: Session, name: str) -> User | None:
    """The account ``name`` logs in to: by its key (case and width do not matter), else (an account made
    before migration 0002 whose key another one holds) by the exact name."""
    user = session.scalar(select(User).where(User.name_key == name_key(name)))
    return user or session.scalar(select(User).where(User.name == unicodedata.normalize("NFKC", name.strip())))


@dataclass(frozen=True)
class LoginResult:
    user: User | None  # None: refused
    wait_s: float = 0.0  # > 0: the name is locked for this long (nothing was checked)


def login_attempt(session: Session, name: str, password: str, unknown: NameBackoff) -> LoginResult:
    """Check ``password`` for ``name`` under the per-name backoff (:func:`..security.backoff_s`).

    A locked name is refused before any hash, so the right password is not even tried while locked; a
    name with no account is locked the same way (in ``unknown``), so a lock does not reveal that a name
    exists. A success ends the backoff."""
    user = user_by_name(session, name)
    key = name_key(name)
    now = utcnow()
    if user is not None and user.locked_until is not None and user.locked_until > now:
        return LoginResult(None, (user.locked_until - now).total_seconds())
    if user is None and unknown.wait_s(key) > 0:
        return LoginResult(None, unknown.wait_s(key))
    end_read(session)  # no transaction held during the ~0.1-0.5 s hash
    ok = verify_password(user.password_hash if user else None, password) and user is not None and user.active
    if user is None:
        unknown.fail(key)
        return LoginResult(None)
    with writing(session):
        if ok:
            if user.failed_logins or user.locked_until:
                session.execute(update(User).where(User.id == user.id).values(failed_logins=0, locked_until=None))
        else:
            session.execute(update(User).where(User.id == user.id).values(failed_logins=User.failed_logins + 1))
            failures = session.scalar(select(User.failed_logins).where(User.id == user.id)) or 0
            wait = backoff_s(failures)
            if wait:
                session.execute(update(User).where(User.id == user.id)
                                .values(locked_until=utcnow() + timedelta(seconds=wait)))
    return LoginResult(user if ok else None)


def authenticate(session: Session, name: str, password: str) -> User | None:
    """The active user with this name and password (no backoff: for scripts and tests)."""
    user = user_by_name(session, name)
    ok = verify_password(user.password_hash if user else None, password)
    return user if ok and user is not None and user.active else None


def unlock(session: Session, name: str) -> User:
    """End a name's login backoff (``tiller app unlock NAME``)."""
    user = user_by_name(session, name)
    if user is None:
        raise NotFound(f"no user {name!r}")
    with writing(session):
        session.execute(update(User).where(User.id == user.id).values(failed_logins=0, locked_until=None))
    return user


def revoke_sessions(session: Session, user_id: int) -> None:
    """Invalidate every signed session cookie of the user (their cookies carry the old version)."""
    with writing(session):
        session.execute(update(User).where(User.id == user_id).values(session_version=User.session_version + 1))


def set_password(session: Session, name: str, password: str) -> User:
    """A new password; ends every session of the user and their login backoff."""
    check_password(password)
    user = user_by_name(session, name)
    if user is None:
        raise NotFound(f"no user {name!r}")
    new_hash = hash_password(password)
    with writing(session):
        session.execute(update(User).where(User.id == user.id).values(
            password_hash=new_hash, session_version=User.session_version + 1, failed_logins=0, locked_until=None))
    return user


def session_is_current(user: User, version: object, logged_in_at: object, max_age_s: float) -> bool:
    """A session cookie still holds: its version is the user's and it is not older than ``max_age_s``."""
    if version != user.session_version or not isinstance(logged_in_at, int | float):
        return False
    return 0 <= time.time() - logged_in_at <= max_age_s


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
