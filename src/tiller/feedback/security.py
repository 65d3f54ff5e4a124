"""Passwords (argon2), API tokens (stored as SHA-256), CSRF tokens and the login rate limiter.

Sessions themselves are Starlette's signed cookies (itsdangerous), configured in :mod:`.app`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# A hash to verify against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    """A 256-bit random token (API tokens, CSRF tokens, idempotency keys of server-made forms)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """API tokens are random, so a fast hash is enough: a leaked table does not reveal usable tokens."""
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


class RateLimiter:
    """At most ``limit`` events per ``window_s`` seconds per key (sliding window, in process memory).

    Kept in memory: one server process guards one database. Several processes would each allow
    ``limit`` attempts, which still bounds guessing."""

    def __init__(self, limit: int = 5, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._events: dict[tuple[str, ...], deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, *key: str) -> bool:
        """Record one attempt; False when the key is over its limit (the attempt must be refused)."""
        now = self.clock()
        with self._lock:
            q = self._events.setdefault(key, deque())
            while q and q[0] <= now - self.window_s:
                q.popleft()
            if len(q) >= self.limit:
                return False
            q.append(now)
            if len(self._events) > 100_000:  # forget idle keys so memory stays bounded
                self._events = {k: v for k, v in self._events.items() if v and v[-1] > now - self.window_s}
            return True
