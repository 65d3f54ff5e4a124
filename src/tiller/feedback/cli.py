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
from .records import KINDS, RecordError, parse_lines

app = typer.Typer(help="The labeling app: rankings, demonstrations, clip comparisons and a chat playground.",
                  no_args_is_help=False)
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
    forwarded_allow_ips: Annotated[str, typer.Option(
        envvar="TILLER_APP_FORWARDED_ALLOW_IPS",
        help="comma-separated addresses of your reverse proxies, whose X-Forwarded-For/-Proto are believed "
             "(default: none; never list an address clients can send from)")] = "",
    secure_cookies: Annotated[bool, typer.Option(
        envvar="TILLER_APP_HTTPS", help="send the session cookie over HTTPS only (TLS at your proxy)")] = False,
    secret_file: Annotated[Path | None, typer.Option(
        envvar="TILLER_APP_SECRET_FILE",
        help="the session signing key's file, made 0600 when absent (default: DB_FILE.secret beside a SQLite "
             "file, else ~/.local/share/tiller/); $TILLER_APP_SECRET wins over it")] = None,
    max_body: Annotated[int, typer.Option(
        envvar="TILLER_APP_MAX_BODY", help="largest request body in bytes (413 above it)")] = 1024 * 1024,
    max_upload: Annotated[int, typer.Option(
        help="largest batch file an admin may upload, in bytes")] = 32 * 1024 * 1024,
    api_docs: Annotated[bool, typer.Option(
        envvar="TILLER_APP_API_DOCS", help="serve /api/docs and /api/openapi.json to logged-in users")] = False,
    runs_dir: Annotated[Path, typer.Option(
        help="the folder of `tiller run`'s run folders, whose status /admin/runs shows")] = Path("runs"),
    clips_dir: Annotated[Path | None, typer.Option(
        envvar="TILLER_APP_CLIPS_DIR",
        help="the folder of clip batches' videos (CLIP_ID.mp4), e.g. what tiller.control renders")] = None,
) -> None:
    """Run the web app (behind a TLS reverse proxy for a real team: docs/deployment.md)."""
    import uvicorn

    from .app import AppSettings, create_app

    for m in models or []:
        if not m.is_dir():
            raise fail(f"--models {m}: not a directory")
    if clips_dir is not None and not clips_dir.is_dir():
        raise fail(f"--clips-dir {clips_dir}: not a directory")
    with session_for(db):
        pass  # checks the URL and migrates, with a clear error
    settings = AppSettings(secret_file=secret_file, secure_cookies=secure_cookies, max_body=max_body,
                           max_upload=max_upload, api_docs=api_docs, runs_dir=runs_dir, clips_dir=clips_dir)
    try:
        app_ = create_app(db, models=[str(m) for m in models or []], settings=settings)
    except (OSError, ValueError) as e:
        raise fail(f"the app secret: {e}") from None
    # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise, so any local client could
    # pick its own address for the login limiter (issue #15): proxy headers only from listed proxies.
    trusted = ",".join(ip.strip() for ip in forwarded_allow_ips.split(",") if ip.strip())
    uvicorn.run(app_, host=host, port=port, access_log=access_log, proxy_headers=bool(trusted),
                forwarded_allow_ips=trusted or None)


@app.command("create-user")
def create_user(
    name: Annotated[str, typer.Argument(help="login name")],
    role: Annotated[str, typer.Option(help="admin or labeler")] = "labeler",
    password: Annotated[str | None, typer.Option(help="the password (default: read from stdin)")] = None,
    token: Annotated[bool, typer.Option("--token", help="also print an API token for the JSON API")] = False,
    allow_unicode_name: Annotated[bool, typer.Option(
        help="allow non-ASCII letters (all from one script) in the name")] = False,
    db: Db = DEFAULT_DB,
) -> None:
    """Add a user; the password comes from --password or the first line of stdin."""
    from .services.users import create_token
    from .services.users import create_user as create

    if password is None:
        password = read_password()
    with session_for(db) as session:
        user = guarded(lambda: create(session, name, role, password or "", allow_unicode=allow_unicode_name))
        typer.echo(f"created {user.role} {user.name}")
        if token:
            typer.echo(f"token: {create_token(session, user)}")


def read_password() -> str:
    if sys.stdin.isatty():
        return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))
    return sys.stdin.readline().rstrip("\n")


@app.command("set-password")
def set_password(
    name: Annotated[str, typer.Argument(help="login name")],
    password: Annotated[str | None, typer.Option(help="the new password (default: read from stdin)")] = None,
    db: Db = DEFAULT_DB,
) -> None:
    """Change a user's password; this logs them out everywhere and ends any login backoff."""
    from .services.users import set_password as do_set

    new = password if password is not None else read_password()
    with session_for(db) as session:
        user = guarded(lambda: do_set(session, name, new))
    typer.echo(f"new password for {user.name}; their sessions have ended")


@app.command()
def unlock(name: Annotated[str, typer.Argument(help="login name")], db: Db = DEFAULT_DB) -> None:
    """End a user's login backoff after too many wrong passwords (takes effect at once, server running)."""
    from .services.users import unlock as do_unlock

    with session_for(db) as session:
        user = guarded(lambda: do_unlock(session, name))
    typer.echo(f"unlocked {user.name}")


@app.command("import-batch")
def import_batch(
    file: Annotated[Path, typer.Argument(
        help="JSONL: tiller sample output (rank), prompts (demo) or {id, a, b, task} clip pairs (clip)")],
    name: Annotated[str, typer.Option(help="batch name")],
    overlap: Annotated[int, typer.Option(help="distinct labelers per item")] = 1,
    kind: Annotated[str, typer.Option(help="rank, demo or clip")] = "rank",
    labelers: Annotated[str, typer.Option(help="comma-separated labelers (default: all)")] = "",
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="accept empty answers (model samples may be)")] = False,
    clips_dir: Annotated[Path | None, typer.Option(
        envvar="TILLER_APP_CLIPS_DIR", help="clip batches: the folder holding CLIP_ID.mp4 for every a and b "
                                            "(the app's --clips-dir)")] = None,
    db: Db = DEFAULT_DB,
) -> None:
    """Import a batch: all records or none."""
    from .services.batches import import_batch as do_import

    if kind not in KINDS:
        raise fail(f"--kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "clip" and (clips_dir is None or not clips_dir.is_dir()):
        raise fail(f"--kind clip needs --clips-dir, the folder of the clips ({clips_dir or 'not given'})")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"{file}: cannot read ({e})") from None
    items = guarded(lambda: parse_lines(text, kind, source=str(file), allow_empty=allow_empty, clips_dir=clips_dir))
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
    """Write a batch's labels as JSONL (rankings for `tiller rm`, demonstrations for `tiller sft`, clip
    comparisons {id, a, b, mu} for tiller.control; can't-tell answers are left out)."""
    from .services.export import batch_records, write_jsonl

    with session_for(db) as session:
        n = guarded(lambda: write_jsonl(batch_records(session, batch), out))
    typer.echo(f"wrote {n} records to {out}")


ALL = Annotated[bool, typer.Option("--all", help="also prompts whose writer did not consent")]
REAL_NAMES = Annotated[bool, typer.Option("--real-names", help="login names instead of pseudonyms (user-<id>)")]


@app.command("export-prompts")
def export_prompts(out: Annotated[Path, typer.Option(help="output JSONL")], all_: ALL = False,
                   real_names: REAL_NAMES = False, db: Db = DEFAULT_DB) -> None:
    """Write the playground's prompts (for `tiller prompts` curation): by default only those whose writer
    consented, under pseudonyms."""
    from .services.export import prompt_records, write_jsonl

    with session_for(db) as session:
        n = write_jsonl(prompt_records(session, consented_only=not all_, real_names=real_names), out)
    typer.echo(f"wrote {n} prompts to {out}")


@app.command("export-chat")
def export_chat(
    what: Annotated[str, typer.Option(help="prompts | comparisons (two-answer comparisons, as rankings) | ratings "
                                           "(thumbs)")],
    out: Annotated[Path, typer.Option(help="output JSONL")],
    all_: ALL = False,
    real_names: REAL_NAMES = False,
    db: Db = DEFAULT_DB,
) -> None:
    """Write what the playground collected; consented and pseudonymous unless asked otherwise."""
    from .services.export import CHAT_EXPORTS, write_jsonl

    if what not in CHAT_EXPORTS:
        raise fail(f"--what must be one of {', '.join(CHAT_EXPORTS)}, not {what!r}")
    with session_for(db) as session:
        n = write_jsonl(CHAT_EXPORTS[what](session, not all_, real_names), out)
    typer.echo(f"wrote {n} records to {out}")


if __name__ == "__main__":
    app()
