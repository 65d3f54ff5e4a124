"""Validation of the files an admin imports: ``tiller sample`` output (to rank) or a prompt list (to answer).

Every record is checked before anything is written, and the first bad one is reported with its line and
field, so an import is all-or-nothing (the database write is one transaction as well).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tiller.data.formats import DataError, check_messages, check_response, check_text, clean_text

META_FIELDS = ("policy", "user_id", "family")


class RecordError(ValueError):
    """A bad record; ``str()`` is one line naming the source, line and field."""

    def __init__(self, source: str, line: int, field_name: str, msg: str):
        # clean_text: an error page or JSON body must be encodable even when the source name is not
        super().__init__(clean_text(f"{source}:{line}: field '{field_name}': {msg}"))
        self.source, self.line, self.field = source, line, field_name


@dataclass
class ItemIn:
    id: str
    prompt: list[dict[str, str]]
    responses: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def parse_record(obj: Any, kind: str, source: str, line: int, allow_empty: bool = False) -> ItemIn:
    """One record, checked with the data formats' own rules (``tiller.data.formats``): the same text,
    prompt and answer checks as ``tiller validate``; empty answers only with ``allow_empty``."""

    def fail(name: str, msg: str) -> RecordError:
        return RecordError(source, line, name, msg)

    if not isinstance(obj, dict):
        raise fail("(record)", "must be a JSON object")
    if not isinstance(obj.get("id"), str) or not obj["id"].strip():
        raise fail("id", "required, a non-empty string")
    if len(obj["id"]) > 255:
        raise fail("id", "longer than 255 characters")
    if "prompt" not in obj:
        raise fail("prompt", "required (a string or a list of {role, content})")
    try:
        check_text(obj["id"], "id")
        prompt = check_messages(obj["prompt"], "prompt")
        responses = None
        if kind == "rank":
            responses = obj.get("responses")
            if not isinstance(responses, list) or len(responses) < 2:
                raise DataError("required for ranking: a list of at least 2 answers", "responses")
            for i, r in enumerate(responses):
                if not isinstance(r, str):
                    raise DataError("must be a string", f"responses[{i}]")
                check_response(r, f"responses[{i}]", allow_empty)
        meta = {}
        for name in META_FIELDS:
            if obj.get(name) is not None:
                if not isinstance(obj[name], str):
                    raise DataError("must be a string", name)
                meta[name] = check_text(obj[name], name)
    except DataError as e:
        raise fail(e.field or "(record)", e.reason) from None
    return ItemIn(id=obj["id"], prompt=prompt, responses=responses, meta=meta)


def parse_lines(text: str, kind: str, source: str = "<upload>", allow_empty: bool = False) -> list[ItemIn]:
    """All records of a JSONL text, or :class:`RecordError` for the first bad one."""
    if kind not in ("rank", "demo"):
        raise ValueError(f"kind must be 'rank' or 'demo', not {kind!r}")
    items: list[ItemIn] = []
    seen: dict[str, int] = {}
    # Lines end at \n only: str.splitlines() would also split inside a JSON string holding U+2028.
    for n, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RecordError(source, n, "(json)", f"not valid JSON ({e.msg}, column {e.colno})") from None
        item = parse_record(obj, kind, source, n, allow_empty)
        if item.id in seen:
            raise RecordError(source, n, "id", f"duplicate id {item.id!r} (first on line {seen[item.id]})")
        seen[item.id] = n
        items.append(item)
    if not items:
        raise RecordError(source, 0, "(file)", "no records")
    return items
