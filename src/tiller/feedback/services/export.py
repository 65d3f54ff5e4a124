"""Exports in the formats ``tiller rm`` (rankings), ``tiller sft`` (demonstrations) and the prompt curation
step read, and :func:`wait_and_export` for ``tiller label --labeler app``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import make_engine, session_factory
from ..models import Assignment, ChatPrompt, Item, Label, User
from .batches import batch_progress, get_batch


def batch_records(session: Session, batch_name: str) -> Iterator[dict[str, Any]]:
    """One record per finished assignment (an item labeled by N labelers gives N records), item order."""
    batch = get_batch(session, batch_name)
    q = (
        select(Item, User.name, Label)
        .join(Assignment, Assignment.item_id == Item.id)
        .join(Label, Label.assignment_id == Assignment.id)
        .join(User, User.id == Assignment.user_id)
        .where(Item.batch_id == batch.id, Assignment.status == "done")
        .order_by(Item.position, User.name)
    )
    for item, labeler, label in session.execute(q):
        if batch.kind == "rank":
            yield {
                "prompt": item.prompt,
                "responses": item.responses,
                "ranking": label.ranking,
                "labeler": labeler,
                "likert": label.likert,
                "flags": label.flags,
                "id": item.external_id,
            }
        else:
            yield {"prompt": item.prompt, "response": label.response, "labeler": labeler, "id": item.external_id}


def prompt_records(session: Session) -> Iterator[dict[str, Any]]:
    """Every playground prompt, with who wrote it and whether they agreed to its use for training."""
    q = select(ChatPrompt, User.name).join(User, User.id == ChatPrompt.user_id).order_by(ChatPrompt.id)
    for row, user_name in session.execute(q):
        yield {"id": f"chat-{row.id}", "prompt": row.prompt, "user_id": user_name, "consent": row.consent}


def to_jsonl(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    for rec in records:
        yield json.dumps(rec, ensure_ascii=False) + "\n"


def write_jsonl(records: Iterator[dict[str, Any]], out_path: str | Path) -> int:
    """Write atomically (temp file + rename), so a reader never sees half an export."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for line in to_jsonl(records):
            f.write(line)
            n += 1
    os.replace(tmp, out)
    return n


def export_batch(db_url: str, batch_name: str, out_path: str | Path) -> int:
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            return write_jsonl(batch_records(session, batch_name), out_path)
    finally:
        engine.dispose()


def export_prompts(db_url: str, out_path: str | Path) -> int:
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            return write_jsonl(prompt_records(session), out_path)
    finally:
        engine.dispose()


def wait_and_export(
    db_url: str, batch_name: str, out_path: str | Path, poll_s: float = 5, timeout_s: float | None = None
) -> int:
    """Block until every assignment of the batch is done or skipped, then export it; returns the record
    count. Raises ``NotFound`` for an unknown batch and ``TimeoutError`` after ``timeout_s``."""
    engine = make_engine(db_url)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        factory = session_factory(engine)
        while True:
            with factory() as session:
                progress = batch_progress(session, batch_name, with_agreement=False)
                if progress.finished:
                    return write_jsonl(batch_records(session, batch_name), out_path)
                pending = progress.counts.get("pending", 0)
            wait = poll_s
            if deadline is not None:
                wait = min(poll_s, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(f"batch {batch_name!r} still has {pending} pending assignments")
            time.sleep(wait)
    finally:
        engine.dispose()


__all__ = ["batch_records", "export_batch", "export_prompts", "get_batch", "prompt_records", "wait_and_export"]
