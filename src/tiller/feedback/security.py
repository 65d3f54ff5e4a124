"""Passwords (argon2), API tokens (stored as SHA-256), CSRF tokens, the login limiters, the gate on
concurrent password hashes and the session signing key (kept outside the database).

Sessions themselves are Starlette's signed cookies (itsdangerous), configured in :mod:`.app`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger(__name__)

_hasher = PasswordHasher()  # argon2id, 64 MiB and t=3 a hash: see HashGate for why they are rationed
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

    def retry_after(self, *key: str) -> int:
        """Whole seconds until ``key`` may try again (0 when it may now); for a ``Retry-After`` header."""
        now = self.clock()
        with self._lock:
            live = [t for t in self._events.get(key, ()) if t > now - self.window_s]
        if len(live) < self.limit:
            return 0
        return max(1, math.ceil(live[-self.limit] + self.window_s - now))


# Per-name login backoff (issue #15, item 9): the first FREE_FAILURES wrong passwords cost nothing; then
# each one locks the name for BACKOFF_BASE_S * 2**(extra failures), at most BACKOFF_MAX_S. A person who
# mistyped waits seconds, not a hard lock; a guesser gets about 100 tries a day; an admin can unlock.
FREE_FAILURES = 5
BACKOFF_BASE_S = 10.0
BACKOFF_MAX_S = 15 * 60.0


def backoff_s(failures: int) -> float:
    """Seconds a name stays locked after its ``failures``-th consecutive wrong password (0: not locked)."""
    if failures < FREE_FAILURES:
        return 0.0
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** min(failures - FREE_FAILURES, 32))


class NameBackoff:
    """The same backoff for names that are no account (in memory, at most ``size`` names, oldest dropped),
    so a lock does not tell a guesser which names exist. Accounts keep theirs in the ``users`` row."""

    def __init__(self, size: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.size, self.clock = size, clock
        self._state: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (failures, locked until)
        self._lock = threading.Lock()

    def wait_s(self, key: str) -> float:
        with self._lock:
            _, until = self._state.get(key, (0, 0.0))
        return max(0.0, until - self.clock())

    def fail(self, key: str) -> float:
        """Count one failure; returns the new lock in seconds."""
        with self._lock:
            failures = self._state.pop(key, (0, 0.0))[0] + 1
            wait = backoff_s(failures)
            self._state[key] = (failures, self.clock() + wait)
            while len(self._state) > self.size:
                self._state.popitem(last=False)
        return wait


class Busy(Exception):
    """No hashing slot came free in time: the caller answers 503 with ``Retry-After``."""


class HashGate:
    """At most ``slots`` password hashes at once (each argon2 hash holds 64 MiB: 30 concurrent logins took
    the server to 2.5 GB, issue #15). Waiting is asynchronous (a poll on the event loop, no worker thread
    held), so a login flood cannot starve the labelers' requests of threads either."""

    def __init__(self, slots: int = 2, wait_s: float = 5.0):
        self.slots, self.wait_s = slots, wait_s
        self._sem = threading.BoundedSemaphore(slots)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        deadline = time.monotonic() + self.wait_s
        while not self._sem.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise Busy()
            await asyncio.sleep(0.02)
        try:
            yield
        finally:
            self._sem.release()


def load_secret(path: Path) -> str:
    """The session signing key kept in ``path``, made (256 random bits, mode 0600) when absent.

    Created under a temporary name and hard-linked into place, so two processes starting at once agree on
    one key and nobody ever reads a half-written file."""
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new_token() + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o): chmod 600 it", path, mode)
    value = path.read_text().strip()
    if len(value) < 32:
        raise ValueError(f"{path}: the app secret must be at least 32 characters")
    return value
