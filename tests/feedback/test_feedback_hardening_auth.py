"""Issue #15, auth and abuse hardening of the labeling app: body limits, login limits per address and per
name, the hashing gate, revocable sessions, the signing key outside the database, proxy headers, user
name rules, API docs behind login, and a bounded abuse run against a live server."""

from __future__ import annotations

import os
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update
from typer.testing import CliRunner

from tiller.feedback import security
from tiller.feedback.app import AppSettings, create_app
from tiller.feedback.db import alembic_config
from tiller.feedback.errors import Conflict, Invalid
from tiller.feedback.models import Setting, User
from tiller.feedback.security import HashGate, RateLimiter, backoff_s, hash_password
from tiller.feedback.services.users import create_user, set_password

PASSWORD = "correct horse"


@pytest.fixture(autouse=True)
def cheap_dummy_hash(monkeypatch: pytest.MonkeyPatch, cheap_argon2: None) -> None:
    """A wrong name is checked against a dummy hash made at import with the production cost (64 MiB);
    in-process floods of random names use a cheap one (the live-server test keeps the real cost)."""
    monkeypatch.setattr(security, "_DUMMY_HASH", security._hasher.hash("not a password"))


def csrf_of(client: TestClient, path: str = "/login") -> str:
    page = client.get(path).text
    return page.split('name="csrf-token" content="')[1].split('"')[0]


def try_login(client: TestClient, name: str, password: str = PASSWORD, **headers: str) -> Any:
    form = {"name": name, "password": password, "csrf_token": csrf_of(client)}
    return client.post("/login", data=form, headers=headers, follow_redirects=False)


def user_named(app: Any, name: str) -> User:
    with app.state.sessions() as s:
        user = s.scalar(select(User).where(User.name == name))
        assert user is not None
        return user


# --- 1. request bodies are bounded before anything parses them ----------------------------------------


def test_oversized_bodies_are_refused_with_413_before_parsing(app: Any, login: Any) -> None:
    anon = TestClient(app)
    big = b'{"ranking": [' + b"[0]," * (600 * 1024) + b"[1]]}"  # 2.4 MB of valid-looking JSON
    r = anon.post("/api/assignments/1/label", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]

    def chunks() -> Any:  # no Content-Length: refused as the bytes arrive
        for _ in range(40):
            yield b"x" * 65536

    r = anon.post("/api/assignments/1/label", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = anon.post("/login", data={"name": "a" * (2 * 1024 * 1024), "password": "x"})
    assert r.status_code == 413 and "text/html" in r.headers["content-type"] and "over the limit" in r.text
    # the larger upload limit is for logged-in sessions only
    files = {"file": ("b.jsonl", b"x" * (1536 * 1024), "application/json")}
    form = {"name": "big", "kind": "rank", "overlap": "1"}
    assert anon.post("/admin/batches", files=files, data=form).status_code == 413
    admin = login(app, "root")
    r = admin.post("/admin/batches", files=files, data={**form, "csrf_token": admin.csrf})
    assert r.status_code != 413  # read and judged by the route (this file is not JSONL)
    # small requests are untouched
    assert anon.post("/api/assignments/1/label", json={"ranking": [[0]]}).status_code == 401


# --- 1 and 9. login limits: per address, per name with backoff, hashes rationed -----------------------


def test_login_is_limited_per_address_whatever_the_name(db_url: str) -> None:
    app = create_app(db_url, secret_key="s", login_limiter=RateLimiter(limit=5, window_s=60))
    with app.state.sessions() as s:
        create_user(s, "ana", "labeler", PASSWORD)
    flood = TestClient(app, client=("203.0.113.9", 4000))
    codes = [try_login(flood, f"nobody{i}-{uuid.uuid4().hex[:6]}", "guess").status_code for i in range(6)]
    assert codes == [401] * 5 + [429]
    r = try_login(flood, "ana")  # the right password from that address waits too
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and "from your address" in r.text
    assert try_login(TestClient(app, client=("198.51.100.7", 4000)), "ana").status_code == 303


def test_name_backoff_is_exponential_says_how_long_and_an_admin_can_unlock(app: Any, db_url: str) -> None:
    assert [backoff_s(n) for n in range(4, 9)] == [0, 10, 20, 40, 80] and backoff_s(40) == 15 * 60
    c = TestClient(app, client=("192.0.2.1", 1))
    assert [try_login(c, "ana", "wrong").status_code for _ in range(5)] == [401] * 5
    # a sixth try, even with the right password and from elsewhere, waits: seconds, not a hard lock
    r = try_login(TestClient(app, client=("192.0.2.2", 1)), "ana")
    assert r.status_code == 429 and "try again in 10 seconds" in r.text and "tiller app unlock" in r.text
    assert r.headers["retry-after"] == "10"
    with app.state.sessions() as s:  # ... and the wait has passed
        s.execute(update(User).where(User.name == "ana").values(locked_until=None))
        s.commit()
    assert try_login(c, "ana", "wrong").status_code == 401  # the 6th failure: 20 s now
    assert "try again in 20 seconds" in try_login(c, "ana").text
    # the admin command ends it at once, for the running server
    from tiller.feedback.cli import app as cli

    result = CliRunner().invoke(cli, ["unlock", "ANA", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert try_login(c, "ana").status_code == 303
    assert user_named(app, "ana").failed_logins == 0
    # a name with no account locks the same way, so a lock does not tell which names exist
    assert [try_login(c, "nobody", "x").status_code for _ in range(6)] == [401] * 5 + [429]


def test_hash_gate_bounds_concurrent_hashes(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app.state.hash_gate = HashGate(slots=2, wait_s=0.3)
    app.state.login_limiter = RateLimiter(limit=1000, window_s=60)
    from tiller.feedback.services import users

    running, peak, lock = [0], [0], threading.Lock()
    real_verify = users.verify_password

    def slow_verify(h: str | None, p: str) -> bool:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.25)
            return real_verify(h, p)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(users, "verify_password", slow_verify)
    codes: list[int] = []

    def attempt(i: int) -> None:
        c = TestClient(app, client=(f"10.0.0.{i}", 1))
        codes.append(try_login(c, f"ghost{i}", "guess").status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 2, f"{peak[0]} hashes ran at once"
    assert sorted(set(codes)) <= [401, 503] and 503 in codes and 401 in codes


# --- 3. sessions: revocable, bounded lifetime, the key outside the database, Secure cookies --------------


def test_logout_revokes_the_cookie(app: Any, login: Any) -> None:
    ana = login(app, "ana")
    stolen = TestClient(app, cookies=dict(ana.cookies))
    assert stolen.get("/api/me").status_code == 200
    assert ana.post("/logout", data={"csrf_token": ana.csrf}, follow_redirects=False).status_code == 303
    assert stolen.get("/api/me").status_code == 401
    assert stolen.get("/", follow_redirects=False).headers["location"] == "/login"
    login(app, "ana")  # logging in again works


def test_password_change_revokes_sessions(app: Any, login: Any, db_url: str) -> None:
    ana = login(app, "ana")
    with app.state.sessions() as s:
        set_password(s, "ana", "a new horse")
    assert ana.get("/api/me").status_code == 401
    assert try_login(TestClient(app), "ana").status_code == 401
    from tiller.feedback.cli import app as cli

    r = CliRunner().invoke(cli, ["set-password", "ana", "--db", db_url], input="third horse\n")
    assert r.exit_code == 0, r.output
    login(app, "ana", "third horse")


def test_session_ends_after_its_lifetime_even_if_used(app: Any, login: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tiller.feedback.services import users

    ana = login(app, "ana")
    assert ana.get("/api/me").status_code == 200
    later = time.time() + app.state.session_max_age_s + 60
    monkeypatch.setattr(users.time, "time", lambda: later)
    assert ana.get("/api/me").status_code == 401


def test_signing_key_lives_in_a_0600_file_not_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TILLER_APP_SECRET", raising=False)
    monkeypatch.delenv("TILLER_APP_SECRET_FILE", raising=False)
    url = f"sqlite:///{tmp_path / 'team.db'}"
    first = create_app(url)
    key_file = tmp_path / "team.db.secret"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_text().strip()) >= 32
    with first.state.sessions() as s:
        assert s.get(Setting, "secret_key") is None
        create_user(s, "ana", "labeler", PASSWORD)
    c = TestClient(first)
    assert try_login(c, "ana").status_code == 303
    again = TestClient(create_app(url), cookies=dict(c.cookies))  # a restart keeps people logged in
    assert again.get("/api/me").status_code == 200
    # a chosen path, and the environment over any file
    other = tmp_path / "keys" / "app.secret"
    create_app(url, settings=AppSettings(secret_file=other))
    assert stat.S_IMODE(other.stat().st_mode) == 0o600 and other.read_text() != key_file.read_text()
    monkeypatch.setenv("TILLER_APP_SECRET", "from-the-environment-" * 2)
    assert TestClient(create_app(url), cookies=dict(c.cookies)).get("/api/me").status_code == 401


def test_migration_from_0001_keeps_users_and_drops_the_stored_key(db_url: str) -> None:
    from alembic import command

    from tiller.feedback.db import make_engine

    command.upgrade(alembic_config(db_url), "0001")
    engine = make_engine(db_url)
    h = hash_password(PASSWORD)
    with engine.begin() as conn:
        for name in ("ana", "Ana"):  # legal before 0002: one differs only by case
            conn.execute(text("INSERT INTO users (name, role, password_hash, active, created_at) "
                              "VALUES (:n, 'labeler', :h, :a, CURRENT_TIMESTAMP)"), {"n": name, "h": h, "a": True})
        conn.execute(text("INSERT INTO settings (key, value) VALUES ('secret_key', 'old-key-in-the-db')"))
    engine.dispose()
    app = create_app(db_url, secret_key="new")
    with app.state.sessions() as s:
        assert s.get(Setting, "secret_key") is None
        assert [u.name_key for u in s.scalars(select(User).order_by(User.id))] == ["ana", None]
        version = s.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert version == ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()  # and on to the newest
    assert try_login(TestClient(app), "ana").status_code == 303
    assert try_login(TestClient(app), "Ana").status_code == 303  # the older one wins the key; both log in
    app.state.db_engine.dispose()


def test_secure_cookie_option(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(db_url, secret_key="s", settings=AppSettings(secure_cookies=True))
    with app.state.sessions() as s:
        create_user(s, "ana", "labeler", PASSWORD)
    r = try_login(TestClient(app, base_url="https://testserver"), "ana")
    assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()
    monkeypatch.setenv("TILLER_APP_HTTPS", "1")
    assert AppSettings.from_env().secure_cookies
    monkeypatch.setenv("TILLER_APP_HTTPS", "0")
    assert not AppSettings.from_env().secure_cookies


@pytest.mark.parametrize("flags, trusted", [([], None), (["--forwarded-allow-ips", "10.0.0.5"], "10.0.0.5")])
def test_serve_trusts_proxy_headers_only_when_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], trusted: str | None
) -> None:
    import uvicorn

    from tiller.feedback.cli import app as cli

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    monkeypatch.delenv("TILLER_APP_FORWARDED_ALLOW_IPS", raising=False)
    r = CliRunner().invoke(cli, ["serve", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--secure-cookies", *flags])
    assert r.exit_code == 0, r.output
    assert seen["proxy_headers"] is bool(trusted) and seen["forwarded_allow_ips"] == trusted
    assert seen["app"].state.settings.secure_cookies


# --- 9. user names: NFKC, no invisibles, no look-alikes -----------------------------------------------


def test_look_alike_names_are_refused(app: Any) -> None:
    with app.state.sessions() as s:
        for bad in ("ana\u200b", "a\u200dna", "an\u00a0a", "ana\x07", "\u202eana", "\u0430na"):
            with pytest.raises(Invalid):
                create_user(s, bad, "labeler", PASSWORD)
        for twin in ("ANA", "Ana", "\uff41\uff4e\uff41"):  # case, full width (NFKC: "ana")
            with pytest.raises(Conflict, match="look like|already exists"):
                create_user(s, twin, "labeler", PASSWORD)
        with pytest.raises(Invalid, match="mixes scripts"):  # Latin with a Cyrillic a, even when allowed
            create_user(s, "\u0430na", "labeler", PASSWORD, allow_unicode=True)
        assert create_user(s, "\u0430\u043d\u043d\u0430", "labeler", PASSWORD, allow_unicode=True).name == "анна"
        assert create_user(s, "dana.k-2", "labeler", PASSWORD).name_key == "dana.k-2"
    assert try_login(TestClient(app), "ANA").status_code == 303  # logs in as ana


# --- 11. API docs ---------------------------------------------------------------------------------------


def test_api_docs_are_off_by_default_and_for_logged_in_users_when_on(app: Any, token_client: Any, db_url: str) -> None:
    anon = TestClient(app)
    assert anon.get("/api/docs").status_code == 404 and anon.get("/api/openapi.json").status_code == 404
    assert token_client(app, "ana").get("/api/openapi.json").status_code == 404
    on = create_app(db_url, secret_key="s", settings=AppSettings(api_docs=True))
    assert TestClient(on).get("/api/openapi.json").status_code == 401
    assert TestClient(on).get("/api/docs").status_code == 401
    api = token_client(on, "ana")
    assert "/api/assignments/next" in api.get("/api/openapi.json").json()["paths"]
    assert api.get("/api/docs").status_code == 200
    on.state.db_engine.dispose()


# --- the bounded abuse run: a live server, unauthenticated floods, one labeler working -------------------


RSS_BOUND_MIB = 450  # idle ~140 MiB, ~220 under this flood; the old code reached 2.1-2.5 GB (issue #15)


def peak_rss_mib(pid: int) -> float:
    """The process's high-water resident memory (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(db_url: str, port: int, log: Path) -> Any:
    """``tiller app serve`` as a team would start it (no proxy trusted), on loopback."""
    import subprocess
    import sys

    import httpx

    cmd = [sys.executable, "-m", "tiller.feedback.cli", "serve", "--db", db_url, "--host", "127.0.0.1",
           "--port", str(port), "--no-access-log"]
    env = {**os.environ, "TILLER_APP_SECRET": uuid.uuid4().hex, "OMP_NUM_THREADS": "1"}
    env.pop("TILLER_APP_FORWARDED_ALLOW_IPS", None)
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/login", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in 30 s")


async def flood(base: str, seconds: float) -> dict[str, Any]:
    """For ``seconds``: 6 senders of 8 MB JSON bodies (Content-Length), 2 of 8 MB chunked bodies, 30
    login floods (random names, a fresh X-Forwarded-For each), and one logged-in labeler labeling."""
    import asyncio
    import random

    import httpx

    until = 0.0
    tally: dict[str, Any] = {"big": {}, "login": {}, "labeler": {}, "labels": 0, "slowest_labeler_s": 0.0}

    def note(kind: str, outcome: object) -> None:
        tally[kind][str(outcome)] = tally[kind].get(str(outcome), 0) + 1

    big = b'{"ranking": [' + b"[0]," * (2 * 1024 * 1024) + b"[1]]}"  # 8 MiB of JSON, cheap to send

    async def headers_only() -> None:
        """The answer to an 8 MB Content-Length comes before a byte of the body is sent."""
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"POST /api/assignments/1/label HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
                     f"\r\nContent-Length: {len(big)}\r\n\r\n".encode())
        await writer.drain()
        try:
            note("big", (await asyncio.wait_for(reader.readline(), 5)).decode().split()[1])
        except TimeoutError:
            note("big", "no answer without the body")  # the server waits to read (and parse) it
        writer.close()

    async def sender(chunked: bool) -> None:
        await headers_only()
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            while time.monotonic() < until:
                async def body() -> Any:
                    for i in range(0, len(big), 1 << 16):
                        yield big[i:i + (1 << 16)]

                try:
                    r = await c.post("/api/assignments/1/label", content=body() if chunked else big,
                                     headers={"content-type": "application/json"})
                    note("big", r.status_code)
                except httpx.TransportError:
                    note("big", "closed")  # the server answered 413 and hung up mid-upload
                await asyncio.sleep(0.01)

    async def guesser() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            page = (await c.get("/login")).text
            token = page.split('name="csrf-token" content="')[1].split('"')[0]
            while time.monotonic() < until:
                fake_ip = f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"
                form = {"name": uuid.uuid4().hex[:12], "password": "guess", "csrf_token": token}
                try:
                    r = await c.post("/login", data=form, headers={"X-Forwarded-For": fake_ip})
                    note("login", r.status_code)
                except httpx.TransportError as e:
                    note("login", type(e).__name__)
                await asyncio.sleep(0.01)

    async def labeler(c: httpx.AsyncClient, csrf: str) -> None:
        while time.monotonic() < until:
            t0 = time.monotonic()
            nxt = await c.get("/api/assignments/next", params={"batch": "flood"})
            note("labeler", nxt.status_code)
            if nxt.status_code == 200:
                a = nxt.json()
                k = len(a["responses"])
                body = {"ranking": [[i] for i in range(k)], "likert": [4] * k, "time_spent_s": 1.0}
                r = await c.post(f"/api/assignments/{a['id']}/label", json=body,
                                 headers={"X-CSRF-Token": csrf, "Idempotency-Key": uuid.uuid4().hex})
                note("labeler", r.status_code)
                tally["labels"] += r.status_code == 201
            tally["slowest_labeler_s"] = max(tally["slowest_labeler_s"], round(time.monotonic() - t0, 2))
            await asyncio.sleep(0.1)

    # the labeler logs in first (a login during a flood may have to wait: the hashing gate), then works on
    async with httpx.AsyncClient(base_url=base, timeout=60, follow_redirects=True) as ana:
        token = (await ana.get("/login")).text.split('name="csrf-token" content="')[1].split('"')[0]
        r = await ana.post("/login", data={"name": "ana", "password": PASSWORD, "csrf_token": token})
        assert r.status_code == 200, r.text  # followed the redirect to the labeling page
        csrf = r.text.split('name="csrf-token" content="')[1].split('"')[0]
        until = time.monotonic() + seconds
        await asyncio.gather(labeler(ana, csrf), *(sender(i >= 6) for i in range(8)),
                             *(guesser() for _ in range(30)))
    return tally


@pytest.mark.slow  # a real server (production argon2) under ~8 s of flood: ~20-30 s on a loaded 2-core CPU
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's memory from /proc")
def test_abuse_keeps_memory_bounded_while_a_labeler_works(tmp_path: Path) -> None:
    import asyncio
    import json

    from tiller.feedback.db import init_db, make_engine, session_factory
    from tiller.feedback.records import parse_lines
    from tiller.feedback.services.batches import import_batch

    db_url = f"sqlite:///{tmp_path / 'abuse.db'}"
    init_db(db_url)
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        create_user(s, "ana", "labeler", PASSWORD)
        lines = "\n".join(json.dumps({"id": f"q{i}", "prompt": f"Question {i}?",
                                      "responses": [f"answer {j}" for j in range(4)]}) for i in range(300))
        import_batch(s, "flood", "rank", 1, parse_lines(lines, "rank"))
    engine.dispose()
    port = free_port()
    server = start_server(db_url, port, tmp_path / "server.log")
    try:
        idle = peak_rss_mib(server.pid)
        tally = asyncio.run(flood(f"http://127.0.0.1:{port}", seconds=8))
        peak = peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"server resident memory: idle {idle:.0f} MiB, peak {peak:.0f} MiB (bound {RSS_BOUND_MIB} MiB); {tally}")
    assert peak < RSS_BOUND_MIB, (peak, tally, (tmp_path / "server.log").read_text()[-3000:])
    assert set(tally["big"]) <= {"413", "closed"} and tally["big"].get("413", 0) > 0, tally
    assert set(tally["login"]) <= {"401", "429", "503"}, tally
    # the forged X-Forwarded-For did not buy fresh addresses: the one real address hit its limit
    assert tally["login"].get("429", 0) > tally["login"].get("401", 0), tally
    assert set(tally["labeler"]) <= {"200", "201"} and tally["labels"] >= 3, tally
