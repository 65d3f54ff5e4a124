"""Password and token storage, the rate limiter, the database settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from tiller.feedback.db import alembic_config, init_db, make_engine
from tiller.feedback.security import RateLimiter, hash_token


def test_passwords_are_argon2id_with_production_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    from tiller.feedback import security

    monkeypatch.undo()  # the module's own hasher, not the cheap one the other tests patch in
    stored = security.hash_password("hunter22")
    params = stored.split("$")
    assert params[1] == "argon2id" and params[3].startswith("m=65536,t=3")
    assert "hunter22" not in stored
    assert security.verify_password(stored, "hunter22") and not security.verify_password(stored, "hunter23")
    assert not security.verify_password(None, "hunter22")


def test_rate_limiter_window() -> None:
    now = [0.0]
    limiter = RateLimiter(limit=5, window_s=60, clock=lambda: now[0])
    assert all(limiter.hit("ana", "1.2.3.4") for _ in range(5))
    assert not limiter.hit("ana", "1.2.3.4")
    assert limiter.hit("ana", "5.6.7.8") and limiter.hit("ben", "1.2.3.4")  # per name + address
    now[0] = 59.9
    assert not limiter.hit("ana", "1.2.3.4")
    now[0] = 60.1  # the first five have left the window
    assert limiter.hit("ana", "1.2.3.4")


def test_token_hash_is_sha256_hex() -> None:
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_sqlite_is_wal_with_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    init_db(url)
    init_db(url)  # idempotent: already at head
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    engine.dispose()


def test_migrations_match_the_models(tmp_path: Path) -> None:
    """The schema Alembic builds is exactly what the ORM models declare (no forgotten migration)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tiller.feedback.models import Base

    url = f"sqlite:///{tmp_path / 'x.db'}"
    init_db(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
