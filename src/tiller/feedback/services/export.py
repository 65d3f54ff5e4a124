"""Exports in the formats ``tiller rm`` (rankings), ``tiller sft`` (demonstrations), the prompt curation
step and ``tiller.control`` (clip comparisons) read, and :func:`wait_and_export` for ``tiller label
--labeler app``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tiller.data.formats import clean_text

from ..db import make_engine, session_factory
from ..models import Assignment, ChatComparison, ChatMessage, ChatPrompt, Conversation, Item, Label, User
from ..records import META_FIELDS
from .batches import BatchProgress, batch_progress, get_batch


def batch_records(session: Session, batch_name: str) -> Iterator[dict[str, Any]]:
    """One record per finished assignment (an item labeled by N labelers gives N records), item order.

    Rankings are ``tiller.data.formats.Ranking`` records, demonstrations ``Demonstration`` records, clip
    comparisons as :func:`clip_record` writes them (can't-tell answers left out), all with the item's import metadata
    (``policy``, ``user_id``, ``family``) and the labeler's ``time_spent_s``. Text stored before the text
    rule is written with bad characters as U+FFFD."""
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
        if batch.kind == "clip":
            if label.choice not in CLIP_MU:  # can't tell: recorded, but no preference to learn from
                continue
            rec = clip_record(item, labeler, label)
        elif batch.kind == "rank":
            rec = {
                "prompt": item.prompt,
                "responses": item.responses,
                "ranking": label.ranking,
                "labeler": labeler,
                "likert": label.likert,
                "flags": label.flags,
                "id": item.external_id,
            }
        else:
            rec = {"prompt": item.prompt, "response": label.response, "labeler": labeler, "id": item.external_id}
        meta = {k: v for k, v in (item.meta or {}).items() if k in META_FIELDS and v is not None}
        yield clean_text({**rec, **meta, "time_spent_s": label.time_spent_s})


# mu = P(a preferred), the target of Christiano et al. 2017's cross-entropy: left (a) 1, right (b) 0, equal 0.5
CLIP_MU = {"left": 1.0, "right": 0.0, "equal": 0.5}


def clip_record(item: Item, labeler: str, label: Label) -> dict[str, Any]:
    """``{id, a, b, mu, task, labeler}``: a and b the clip ids (a shown on the left), mu from the choice."""
    a, b = item.responses or ["", ""]
    task = item.prompt[-1]["content"] if item.prompt else ""
    return {"id": item.external_id, "a": a, "b": b, "mu": CLIP_MU[str(label.choice)], "task": task,
            "labeler": labeler}


def pseudonym(user: User) -> str:
    """A stable stand-in for a login name in exports that leave the team (prompt curation, chat data)."""
    return f"user-{user.id}"


def _consents(session: Session, conversation_ids: set[int]) -> dict[tuple[int, str], bool]:
    """(conversation, prompt as JSON) -> whether its author agreed to training use."""
    q = select(ChatPrompt).where(ChatPrompt.conversation_id.in_(conversation_ids))
    return {(p.conversation_id, _key(p.prompt)): p.consent for p in session.scalars(q)}


def _key(prompt: list[Any]) -> str:
    return json.dumps(prompt, sort_keys=True)


def prompt_records(session: Session, consented_only: bool = True, real_names: bool = False) -> Iterator[dict[str, Any]]:
    """Playground prompts as ``PromptRecord``s. By default only those whose author consented to their use
    for training (InstructGPT sec. 3.2), under a pseudonym (``user-<id>``) instead of the login name."""
    q = select(ChatPrompt, User).join(User, User.id == ChatPrompt.user_id).order_by(ChatPrompt.id)
    if consented_only:
        q = q.where(ChatPrompt.consent.is_(True))
    for row, user in session.execute(q):
        who = user.name if real_names else pseudonym(user)
        yield clean_text({"id": f"chat-{row.id}", "prompt": row.prompt, "user_id": who, "consent": row.consent})


def chat_comparison_records(
    session: Session, consented_only: bool = True, real_names: bool = False
) -> Iterator[dict[str, Any]]:
    """Decided playground comparisons as K=2 ``Ranking`` records (the chosen answer ranked first)."""
    q = (
        select(ChatComparison, User)
        .join(Conversation, Conversation.id == ChatComparison.conversation_id)
        .join(User, User.id == Conversation.user_id)
        .where(ChatComparison.choice.is_not(None))
        .order_by(ChatComparison.id)
    )
    rows = list(session.execute(q))
    consents = _consents(session, {c.conversation_id for c, _ in rows})
    for comp, user in rows:
        if consented_only and not consents.get((comp.conversation_id, _key(comp.prompt)), False):
            continue
        choice = int(comp.choice)  # type: ignore[arg-type]  # not None: filtered in the query
        yield clean_text({
            "prompt": comp.prompt, "responses": comp.responses, "ranking": [[choice], [1 - choice]],
            "labeler": user.name if real_names else pseudonym(user), "id": f"chat-cmp-{comp.id}",
        })


def chat_rating_records(
    session: Session, consented_only: bool = True, real_names: bool = False
) -> Iterator[dict[str, Any]]:
    """Thumbs on playground answers: ``{"id", "prompt", "response", "rating": 1 | -1, "labeler"}`` (the
    prompt is the conversation before the answer; a KTO-style desirable/undesirable label)."""
    q = (
        select(Conversation, User)
        .join(User, User.id == Conversation.user_id)
        .where(Conversation.id.in_(select(ChatMessage.conversation_id).where(ChatMessage.rating.is_not(None))))
        .order_by(Conversation.id)
    )
    rows = list(session.execute(q))
    consents = _consents(session, {c.id for c, _ in rows})
    for conv, user in rows:
        turns = [{"role": m.role, "content": m.content} for m in conv.messages]
        for m in conv.messages:
            if m.rating is None:
                continue
            prompt = turns[: m.position]
            if consented_only and not consents.get((conv.id, _key(prompt)), False):
                continue
            yield clean_text({"id": f"chat-msg-{m.id}", "prompt": prompt, "response": m.content, "rating": m.rating,
                              "labeler": user.name if real_names else pseudonym(user)})


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


def export_prompts(db_url: str, out_path: str | Path, consented_only: bool = True, real_names: bool = False) -> int:
    """``tiller app export-prompts``: see :func:`prompt_records` for the defaults."""
    return export_chat(db_url, out_path, "prompts", consented_only, real_names)


CHAT_EXPORTS = {"prompts": prompt_records, "comparisons": chat_comparison_records, "ratings": chat_rating_records}


def export_chat(
    db_url: str, out_path: str | Path, what: str, consented_only: bool = True, real_names: bool = False
) -> int:
    """Write playground data as JSONL: ``prompts``, ``comparisons`` or ``ratings`` (consented, pseudonymised
    by default)."""
    if what not in CHAT_EXPORTS:
        raise ValueError(f"what must be one of {', '.join(CHAT_EXPORTS)}, not {what!r}")
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            return write_jsonl(CHAT_EXPORTS[what](session, consented_only, real_names), out_path)
    finally:
        engine.dispose()


def wait_and_export(
    db_url: str, batch_name: str, out_path: str | Path, poll_s: float = 5, timeout_s: float | None = None,
    ready: Callable[[Session, BatchProgress], bool] | None = None,
) -> int:
    """Block until the batch may be exported, then export its done assignments; returns the record count.

    By default that is once every assignment is settled (done, skipped or closed). ``ready(session,
    progress)``, called at every check with the progress and the agreement so far, decides instead: True
    exports now (it may first close what is left in that session), False waits, and it may raise to stop.
    Raises ``NotFound`` for an unknown batch and ``TimeoutError`` after ``timeout_s``."""
    engine = make_engine(db_url)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        factory = session_factory(engine)
        while True:
            with factory() as session:
                progress = batch_progress(session, batch_name, with_agreement=ready is not None)
                if ready(session, progress) if ready is not None else progress.finished:
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


__all__ = [
    "CLIP_MU", "batch_records", "clip_record", "chat_comparison_records", "chat_rating_records", "export_batch", "export_chat", "export_prompts",
    "get_batch", "prompt_records", "wait_and_export",
]
