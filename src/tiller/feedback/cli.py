"""``tiller app``: run the labeling app and manage its data from the command line.

The lead mounts it with ``app.add_typer(feedback_cli.app, name="app")``. Every user error prints one line
and exits with status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session

from .db import init_db, make_engine, session_factory
from .errors import ServiceError
from .records import RecordError, parse_lines

app = typer.Typer(help="The labeling app: rankings, demonstrations and a chat playground.", no_args_is_help=False)
T = TypeVar("T")

DEFAULT_DB = "sqlite:///feedback.db"
Db = Annotated[str, typer.Option("--db", help="sqlite:///file.db, or postgresql+psycopg://user:pw@host/db")]


def fail(msg: str) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(2)


@contextmanager
def session_for(db_url: str) -> Iterator[Session]:
    """A session on a migrated database; bad URLs and unreachable servers become one line + exit 2."""
    try:
        init_db(db_url)
        engine = make_engine(db_url)
    except (ArgumentError, ValueError) as e:
        raise fail(f"--db {db_url!r}: {e}") from None
    except OperationalError as e:
        raise fail(f"--db: cannot open the database: {str(e.orig).strip().splitlines()[0]}") from None
    try:
        with session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


def guarded(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (ServiceError, RecordError) as e:
        raise fail(getattr(e, "detail", None) or str(e)) from None


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context) -> None:
    """With no command: ``serve`` on the defaults."""
    if ctx.invoked_subcommand is None:
        serve()


@app.command()
def serve(
    db: Db = DEFAULT_DB,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    models: Annotated[list[Path] | None, typer.Option("--models", help="checkpoint dir for the playground (repeat)")] = None,
    access_log: Annotated[bool, typer.Option(help="log every request")] = True,
) -> None:
    """Run the web app."""
    import uvicorn

    from .app import create_app

    for m in models or []:
        if not m.is_dir():
            raise fail(f"--models {m}: not a directory")
    with session_for(db):
        pass  # checks the URL and migrates, with a clear error
    app_ = create_app(db, models=[str(m) for m in models or []])
    uvicorn.run(app_, host=host, port=port, access_log=access_log)


@app.command("create-user")
def create_user(
    name: Annotated[str, typer.Argument(help="login name")],
    role: Annotated[str, typer.Option(help="admin or labeler")] = "labeler",
    password: Annotated[str | None, typer.Option(help="the password (default: read from stdin)")] = None,
    token: Annotated[bool, typer.Option("--token", help="also print an API token for the JSON API")] = False,
    db: Db = DEFAULT_DB,
) -> None:
    """Add a user; the password comes from --password or the first line of stdin."""
    from .services.users import create_token
    from .services.users import create_user as create

    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True) if sys.stdin.isatty() \
            else sys.stdin.readline().rstrip("\n")
    with session_for(db) as session:
        user = guarded(lambda: create(session, name, role, password or ""))
        typer.echo(f"created {user.role} {user.name}")
        if token:
            typer.echo(f"token: {create_token(session, user)}")


@app.command("import-batch")
def import_batch(
    file: Annotated[Path, typer.Argument(help="JSONL: tiller sample output (rank) or prompts (demo)")],
    name: Annotated[str, typer.Option(help="batch name")],
    overlap: Annotated[int, typer.Option(help="distinct labelers per item")] = 1,
    kind: Annotated[str, typer.Option(help="rank or demo")] = "rank",
    labelers: Annotated[str, typer.Option(help="comma-separated labelers (default: all)")] = "",
    db: Db = DEFAULT_DB,
) -> None:
    """Import a batch: all records or none."""
    from .services.batches import import_batch as do_import

    if kind not in ("rank", "demo"):
        raise fail(f"--kind must be rank or demo, not {kind!r}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"{file}: cannot read ({e})") from None
    items = guarded(lambda: parse_lines(text, kind, source=str(file)))
    chosen = [x.strip() for x in labelers.split(",") if x.strip()] or None
    with session_for(db) as session:
        batch = guarded(lambda: do_import(session, name, kind, overlap, items, chosen))
        typer.echo(f"imported {len(items)} items into {batch.name!r} ({batch.kind}, overlap {batch.overlap})")


@app.command()
def export(
    batch: Annotated[str, typer.Option(help="batch name")],
    out: Annotated[Path, typer.Option(help="output JSONL")],
    db: Db = DEFAULT_DB,
) -> None:
    """Write a batch's labels as JSONL (rankings for `tiller rm`, demonstrations for `tiller sft`)."""
    from .services.export import batch_records, write_jsonl

    with session_for(db) as session:
        n = guarded(lambda: write_jsonl(batch_records(session, batch), out))
    typer.echo(f"wrote {n} records to {out}")


@app.command("export-prompts")
def export_prompts(out: Annotated[Path, typer.Option(help="output JSONL")], db: Db = DEFAULT_DB) -> None:
    """Write every playground prompt with its user and consent flag (for prompt curation)."""
    from .services.export import prompt_records, write_jsonl

    with session_for(db) as session:
        n = write_jsonl(prompt_records(session), out)
    typer.echo(f"wrote {n} prompts to {out}")


if __name__ == "__main__":
    app()
