"""Validation of the files an admin imports: ``tiller sample`` output (to rank), a prompt list (to answer),
or clip pairs (to compare: ``{id, a, b, task}``, a and b the stems of MP4 files in the app's clips folder).

Every record is checked before anything is written, and the first bad one is reported with its line and
field, so an import is all-or-nothing (the database write is one transaction as well).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiller.data.formats import DataError, check_messages, check_name, check_response, check_text, clean_text

META_FIELDS = ("policy", "user_id", "family")
KINDS = ("rank", "demo", "clip")
CLIP_SUFFIX = ".mp4"  # a clip id names the file CLIP_ID.mp4 in the clips folder
MAX_TASK = 2000  # characters of a clip batch's task ("Which clip is closer to a backflip?")


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


def clip_file(clips_dir: Path, clip_id: str) -> Path:
    """The file of clip ``clip_id``; the id must pass the name rule (no '/', no leading '.'), so the path
    cannot leave ``clips_dir``."""
    return clips_dir / f"{check_name(clip_id, 'clip id')}{CLIP_SUFFIX}"


def parse_clip_record(obj: dict[str, Any], clips_dir: Path) -> ItemIn:
    """``{id, a, b, task}``: a and b clip ids whose files exist now; stored as the task (one user turn) and
    the two ids as the item's answers (a on the left, b on the right)."""
    clips = []
    for side in ("a", "b"):
        value = obj.get(side)
        if not isinstance(value, str):
            raise DataError("required: a clip id (the stem of an .mp4 file in the clips folder)", side)
        check_name(value, side)
        if not clip_file(clips_dir, value).is_file():
            raise DataError(f"no clip {value!r} in the clips folder (expected {value}{CLIP_SUFFIX})", side)
        clips.append(value)
    if clips[0] == clips[1]:
        raise DataError("the same clip as 'a': a comparison needs two clips", "b")
    task = obj.get("task")
    if not isinstance(task, str) or not task.strip():
        raise DataError("required: the question shown above the clips, e.g. 'Which clip is closer to a backflip?'",
                        "task")
    if len(task) > MAX_TASK:
        raise DataError(f"longer than {MAX_TASK} characters", "task")
    check_text(task, "task")
    return ItemIn(id=obj["id"], prompt=[{"role": "user", "content": task.strip()}], responses=clips)


def parse_record(
    obj: Any, kind: str, source: str, line: int, allow_empty: bool = False, clips_dir: Path | None = None
) -> ItemIn:
    """One record, checked with the data formats' own rules (``tiller.data.formats``): the same text,
    prompt and answer checks as ``tiller validate``; empty answers only with ``allow_empty``; for a clip
    batch, clip ids whose files are in ``clips_dir``."""

    def fail(name: str, msg: str) -> RecordError:
        return RecordError(source, line, name, msg)

    if not isinstance(obj, dict):
        raise fail("(record)", "must be a JSON object")
    if not isinstance(obj.get("id"), str) or not obj["id"].strip():
        raise fail("id", "required, a non-empty string")
    if len(obj["id"]) > 255:
        raise fail("id", "longer than 255 characters")
    if kind == "clip":
        if clips_dir is None:
            raise ValueError("a clip batch needs the clips folder (--clips-dir) its clip ids refer to")
        try:
            check_text(obj["id"], "id")
            item = parse_clip_record(obj, clips_dir)
        except DataError as e:
            raise fail(e.field or "(record)", e.reason) from None
        item.meta = _meta(obj, fail)
        return item
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
    except DataError as e:
        raise fail(e.field or "(record)", e.reason) from None
    return ItemIn(id=obj["id"], prompt=prompt, responses=responses, meta=_meta(obj, fail))


def _meta(obj: dict[str, Any], fail: Callable[[str, str], RecordError]) -> dict[str, Any]:
    """The optional metadata fields (``policy``, ``user_id``, ``family``), kept with the item for its export."""
    meta = {}
    for name in META_FIELDS:
        if obj.get(name) is not None:
            if not isinstance(obj[name], str):
                raise fail(name, "must be a string")
            try:
                meta[name] = check_text(obj[name], name)
            except DataError as e:
                raise fail(name, e.reason) from None
    return meta


def parse_lines(
    text: str, kind: str, source: str = "<upload>", allow_empty: bool = False, clips_dir: Path | None = None
) -> list[ItemIn]:
    """All records of a JSONL text, or :class:`RecordError` for the first bad one. A clip batch needs the
    clips folder its ids refer to."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "clip" and clips_dir is None:
        raise ValueError("a clip batch needs the clips folder (--clips-dir) its clip ids refer to")
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
        item = parse_record(obj, kind, source, n, allow_empty, clips_dir)
        if item.id in seen:
            raise RecordError(source, n, "id", f"duplicate id {item.id!r} (first on line {seen[item.id]})")
        seen[item.id] = n
        items.append(item)
    if not items:
        raise RecordError(source, 0, "(file)", "no records")
    return items
