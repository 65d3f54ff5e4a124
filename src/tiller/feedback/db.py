"""Engines, sessions and migrations for SQLite (one labeler team on a laptop) and PostgreSQL (a real team).

SQLite runs in WAL mode with foreign keys on. Python's sqlite3 opens transactions lazily with a plain
``BEGIN``; a transaction that reads and then writes can then fail at once with "database is locked" when
another writer got there first (the busy timeout does not apply to a lock upgrade). So writes go through
:func:`write_session`, which starts with ``BEGIN IMMEDIATE`` on SQLite: writers queue on the busy timeout
instead of failing. On PostgreSQL it is an ordinary transaction; uniqueness constraints do the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
_IMMEDIATE = "tiller_begin_immediate"


def make_engine(db_url: str) -> Engine:
    """An engine for ``db_url`` (``sqlite:///file.db`` or ``postgresql+psycopg://...``)."""
    url = make_url(db_url)
    # Room for every worker thread (anyio runs up to 40 sync routes at once): a request should wait on
    # the database's own locks, never fail on an exhausted pool.
    pool = {"pool_size": 10, "max_overflow": 40, "pool_timeout": 120}
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **pool)
    if url.database in (None, "", ":memory:"):
        pool = {}  # one shared in-memory connection (StaticPool/SingletonThreadPool)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60}, **pool)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see module docstring)
        cur = dbapi_conn.cursor()
        if url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA synchronous=NORMAL")  # safe in WAL mode: a crash loses no committed write
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_IMMEDIATE) else "BEGIN")

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def write_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One write transaction: committed on success, rolled back on any error."""
    with factory() as session, writing(session):
        yield session


@contextmanager
def writing(session: Session) -> Iterator[Session]:
    """A write transaction on ``session`` that always ends before the block does: committed on success,
    rolled back on any error. Ends any read transaction the session had open first.

    Services never return (or raise) with a write transaction open: on SQLite it holds the database's
    one write lock, and a request that kept it until its teardown ran on a worker thread could wait on
    threads that are all busy waiting for that same lock."""
    if session.in_transaction():
        session.commit()  # only reads so far: ends them and frees the connection
    session.connection(execution_options={_IMMEDIATE: True})
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise


def end_read(session: Session) -> None:
    """Close the read transaction a service opened (keeps loaded objects usable: expire_on_commit=False)."""
    if session.in_transaction():
        session.commit()


def alembic_config(db_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", db_url.replace("%", "%%"))
    return cfg


def init_db(db_url: str) -> None:
    """Create or upgrade the schema to the newest migration (``alembic upgrade head``)."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(db_url), "head")
