"""``tiller import``, ``tiller validate``, ``tiller prompts``: data commands, mounted by ``tiller.cli``.

A problem the user can fix (a bad line, a bad config) prints one line ``file:line: field ...`` on stderr
and exits with status 2.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from tiller.config import ConfigError, load_config
from tiller.data.formats import DataError, PromptRecord, Ranking, SampleSet, kind_class, ranking_to_pairs
from tiller.data.importers import IMPORTERS, count_empty, import_summarize
from tiller.data.io import RecordList, read_records, write_jsonl
from tiller.data.prompts import CurationConfig, curate

app = typer.Typer(help="Data: import public preference sets, validate record files, curate prompts.")


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(2)


@contextmanager
def _quiet_io_log():
    """The commands list skipped records themselves, so the library's warnings would print them twice."""
    loggers = [logging.getLogger(name) for name in ("tiller.data.io", "tiller.data.importers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _report_skipped(records: RecordList[Any]) -> None:
    for p in records.problems:
        typer.echo(f"skipped {p}", err=True)
    if records.problems:
        typer.echo(f"skipped {len(records.problems)} bad record(s)", err=True)


@app.command("import")
def import_cmd(
    format: Annotated[str, typer.Argument(help=f"one of: {', '.join(IMPORTERS)}")],
    src: Annotated[Path, typer.Argument(help="file to import (.jsonl[.gz], .json, .parquet, datasets folder)")],
    out: Annotated[Path, typer.Argument(help="rankings JSONL to write")],
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="skip bad lines, listing each on stderr")] = False,
    split: Annotated[str | None, typer.Option(help="summarize only: keep rows of this split")] = None,
) -> None:
    """Import HH-RLHF, summarize-from-feedback or TRL pairs as native rankings (K = 2)."""
    if format not in IMPORTERS:
        raise _fail(f"unknown format {format!r} (known: {', '.join(IMPORTERS)})")
    if split is not None and format != "summarize":
        raise _fail("--split applies only to the summarize format")
    try:
        with _quiet_io_log():
            if format == "summarize":
                records = import_summarize(src, split=split, skip_bad=skip_bad)
            else:
                records = IMPORTERS[format](src, skip_bad=skip_bad)
    except DataError as e:
        located = e.line is not None or e.record is not None
        raise _fail(f"{e} (--skip-bad skips bad lines)" if located else str(e)) from None
    _report_skipped(records)
    n = write_jsonl(out, records)
    typer.echo(f"wrote {n} rankings to {out}")
    n_empty = count_empty(records)
    if n_empty:
        typer.echo(f"note: {n_empty} of {n} rankings have an empty answer (kept; read them with "
                   "allow_empty=true, or validate with --allow-empty)", err=True)


def _summary(kind: str, records: list[Any]) -> str:
    cls = kind_class(kind)
    n = len(records)
    if cls is Ranking:
        ks = Counter(len(r.responses) for r in records)
        pairs = sum(len(ranking_to_pairs(r)) for r in records)
        ties = sum(any(len(g) > 1 for g in r.ranking) for r in records)
        labelers = len({r.labeler for r in records if r.labeler is not None})
        k_text = ", ".join(f"K={k}: {c}" for k, c in sorted(ks.items()))
        return f"{n} rankings ({k_text}); {pairs} implied pairs; {ties} with ties; {labelers} labelers"
    if cls is PromptRecord:
        splits = Counter(r.split or "unset" for r in records)
        users = len({r.user_id for r in records})
        return f"{n} prompts from {users} users; " + ", ".join(f"{s}: {c}" for s, c in sorted(splits.items()))
    if cls is SampleSet:
        return f"{n} sample sets; {sum(len(r.responses) for r in records)} responses"
    return f"{n} {cls.__name__.lower()} records"


@app.command("validate")
def validate_cmd(
    kind: Annotated[str, typer.Argument(help="prompt | demonstration | sample | ranking | pair (plural fine)")],
    path: Annotated[Path, typer.Argument(help="file to check (.jsonl[.gz], .json, .parquet, datasets folder)")],
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="accept empty responses")] = False,
) -> None:
    """Check every record of a file; print counts, or the first problem (exit 2)."""
    try:
        records = read_records(path, kind, allow_empty=allow_empty)
    except DataError as e:
        raise _fail(str(e)) from None
    typer.echo(f"{path}: {_summary(kind, records)}")


def _write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


@app.command("prompts")
def prompts_cmd(
    src: Annotated[Path, typer.Argument(help="prompts JSONL to curate")],
    out_dir: Annotated[Path, typer.Argument(help="folder for prompts.jsonl and curation.json")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value settings, e.g. max_per_user=100")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML file of CurationConfig settings")] = None,
) -> None:
    """Curate prompts (consent, dedup by prefix, per-user cap, split by user, PII scrub)."""
    try:
        cfg = load_config(CurationConfig, config, overrides or [])
        records = read_records(src, "prompt")
    except (ConfigError, DataError) as e:
        raise _fail(str(e)) from None
    kept, report = curate(list(records), cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "prompts.jsonl", kept)
    _write_json_atomic(out_dir / "curation.json", {"source": str(src), **report})
    splits = ", ".join(f"{s}: {v['prompts']}" for s, v in report["splits"].items())
    typer.echo(f"kept {report['output']} of {report['input']} prompts ({splits}); report in {out_dir / 'curation.json'}")
