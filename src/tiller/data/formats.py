"""The record formats every stage reads and writes, validated on load.

Each format is a dataclass with ``from_json`` (strict: a missing field, an unknown field or a wrong type
raises :class:`DataError` naming the field) and ``to_json`` (optional fields left out when unset, so a
record round-trips to the same JSON). Readers add the file and line to the error (see ``tiller.data.io``).

Rankings follow InstructGPT (Ouyang et al. 2022, section 3.5): K responses to one prompt ranked best
first, ties allowed, one record per labeler; every ordered pair across groups is one comparison.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from tiller.chat import ChatFormatError, Messages, to_messages

# InstructGPT's labeler metadata (Ouyang et al. 2022, appendix B.2, table 3).
FLAGS = (
    "fails_instruction",
    "inappropriate",
    "hallucination",
    "satisfies_constraint",
    "sexual",
    "violent",
    "harmful_advice",
    "denigrates",
    "opinion",
    "moral_judgment",
)
SPLITS = ("train", "valid", "test")
Prompt = str | Messages
# An empty answer is refused by default (usually a broken export), but it can be a real preference: in
# HH-RLHF harmless data a labeler sometimes preferred saying nothing. ``allow_empty=True`` accepts it.
EMPTY = "empty response (allow_empty=True, or --allow-empty, accepts empty answers)"
# Text no stage can keep: NUL (PostgreSQL text cannot hold it) and UTF-16 surrogates (JSON's "\ud800" parses
# to one; it cannot be written as UTF-8, so every file, page or response holding it fails).
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
# Names that become a path segment (batch names in URLs and export file names): no '/', no '..'.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
MAX_TIME_S = 24 * 3600.0  # time spent on one label: more is a tab left open, not work


class DataError(ValueError):
    """A record that cannot be used. ``str()`` is one line: ``path:line: field 'name': reason``.

    ``line`` is 1-based for JSONL; for JSON, parquet and datasets folders ``record`` is the 0-based index."""

    def __init__(
        self,
        reason: str,
        field: str | None = None,
        path: str | None = None,
        line: int | None = None,
        record: int | None = None,
    ):
        self.reason, self.field, self.path, self.line, self.record = reason, field, path, line, record
        super().__init__(str(self))

    def at(self, path: str, line: int | None = None, record: int | None = None) -> DataError:
        """The same problem, located in a file."""
        return DataError(self.reason, self.field, path, line, record)

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
            if self.record is not None:
                where += f"record {self.record}: "
        what = f"field {self.field!r}: " if self.field else ""
        return f"{where}{what}{self.reason}"


# --- the text and name rules (the app and every reader share them) ---------------------------------------


def check_text(value: str, field: str | None = None) -> str:
    """``value`` unchanged, or :class:`DataError` naming ``field`` if it holds a NUL or a lone surrogate."""
    m = _BAD_TEXT.search(value)
    if m:
        what = "a NUL character" if m.group() == "\x00" else f"an unpaired surrogate (U+{ord(m.group()):04X})"
        raise DataError(f"{what} at character {m.start()}; only valid Unicode text can be stored", field)
    return value


def clean_text(value: Any) -> Any:
    """For showing text stored before :func:`check_text` existed: every NUL and lone surrogate becomes
    U+FFFD, in strings and inside lists and dicts (keys too); other values unchanged."""
    if isinstance(value, str):
        return _BAD_TEXT.sub("\ufffd", value)
    if isinstance(value, list):
        return [clean_text(v) for v in value]
    if isinstance(value, tuple):
        return tuple(clean_text(v) for v in value)
    if isinstance(value, dict):
        return {clean_text(k): clean_text(v) for k, v in value.items()}
    return value


def normalize_newlines(text: str) -> str:
    """``\r\n`` and lone ``\r`` as ``\n`` (a browser sends a textarea's line breaks as CRLF)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def check_name(value: str, field: str = "name") -> str:
    """A name that is safe as one URL path segment and a file name (see ``NAME_RULE``)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise DataError(f"{value!r} is not a valid name ({NAME_RULE})", field)
    return value


def check_time(value: Any, field: str = "time_spent_s") -> float:
    """Seconds spent labeling: a finite number in [0, MAX_TIME_S]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"expected a finite number of seconds, got {value!r}", field)
    if not 0 <= value <= MAX_TIME_S:
        raise DataError(f"{value!r} is outside 0-{MAX_TIME_S:g} seconds", field)
    return float(value)


def check_messages(value: Any, field: str = "prompt") -> Messages:
    """A prompt (text or messages) as messages: valid roles, valid text, ending with a non-empty user turn."""
    if isinstance(value, str) and not value.strip():
        raise DataError("empty prompt", field)
    try:
        messages = to_messages(value)
    except ChatFormatError as e:
        raise DataError(str(e), field) from None
    for i, m in enumerate(messages):
        check_text(m["content"], f"{field}[{i}].content" if not isinstance(value, str) else field)
    if messages[-1]["role"] != "user":
        raise DataError("a prompt must end with a user message", field)
    if not messages[-1]["content"].strip():
        raise DataError("empty prompt: the last user message has no text", field)
    return messages


# --- field checks: each returns the value or raises DataError naming the field -----------------------


def _obj(obj: Any, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise DataError(f"unknown field (known: {', '.join(known)})", unknown[0])
    return obj


def _get(obj: dict[str, Any], name: str, required: bool) -> Any:
    value = obj.get(name)
    if value is None and required:  # null counts as missing (parquet fills absent columns with null)
        raise DataError("missing", name)
    return value


def _str(obj: dict[str, Any], name: str, required: bool = False, nonempty: bool = False) -> str | None:
    value = _get(obj, name, required)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", name)
    if nonempty and not value.strip():
        raise DataError("empty", name)
    return check_text(value, name)


def _time(obj: dict[str, Any], name: str = "time_spent_s") -> float | None:
    value = obj.get(name)
    return None if value is None else check_time(value, name)


def _prompt(obj: dict[str, Any], name: str = "prompt", required: bool = True) -> Prompt | None:
    """A prompt as given (text or messages), checked: a valid messages list that ends with a user turn."""
    value = _get(obj, name, required)
    if value is None:
        return None
    messages = check_messages(value, name)
    return value if isinstance(value, str) else messages


def _responses(obj: dict[str, Any], name: str = "responses", allow_empty: bool = False) -> list[str]:
    value = _get(obj, name, True)
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise DataError("expected a list of strings", name)
    if len(value) < 2:
        raise DataError(f"needs at least 2 responses to compare, got {len(value)}", name)
    for i, r in enumerate(value):
        check_response(r, f"{name}[{i}]", allow_empty)
    return value


def check_response(text: str, field: str = "response", allow_empty: bool = False) -> str:
    """An answer: valid text, and not blank unless ``allow_empty``."""
    if not text.strip() and not allow_empty:
        raise DataError(EMPTY, field)
    return check_text(text, field)


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _ranking(value: Any, k: int) -> list[list[int]]:
    """Groups of indices, best first; a group of several is a tie; every index 0..K-1 exactly once."""
    if value is None:
        raise DataError("missing", "ranking")
    if not isinstance(value, list) or not all(isinstance(g, list) for g in value):
        raise DataError("expected a list of groups of response indices, e.g. [[1], [0, 2]]", "ranking")
    seen: set[int] = set()
    for gi, group in enumerate(value):
        if not group:
            raise DataError(f"group {gi} is empty", "ranking")
        for i in group:
            if not _int(i):
                raise DataError(f"{i!r} is not a response index", "ranking")
            if not 0 <= i < k:
                raise DataError(f"index {i} is out of range for {k} responses", "ranking")
            if i in seen:
                raise DataError(f"index {i} appears twice", "ranking")
            seen.add(i)
    missing = sorted(set(range(k)) - seen)
    if missing:
        raise DataError(f"index {missing[0]} is missing", "ranking")
    return [list(g) for g in value]


def _likert(value: Any, k: int) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise DataError("expected a list of integers 1-7, one per response", "likert")
    if len(value) != k:
        raise DataError(f"{len(value)} values for {k} responses", "likert")
    for i, v in enumerate(value):
        if not _int(v) or not 1 <= v <= 7:
            raise DataError(f"{v!r} is not an integer in 1-7", f"likert[{i}]")
    return list(value)


def _flags(value: Any, k: int) -> list[list[str]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(f, list) for f in value):
        raise DataError("expected a list of flag lists, one per response", "flags")
    if len(value) != k:
        raise DataError(f"{len(value)} flag lists for {k} responses", "flags")
    for i, fs in enumerate(value):
        for f in fs:
            if f not in FLAGS:
                raise DataError(f"unknown flag {f!r} (known: {', '.join(FLAGS)})", f"flags[{i}]")
    return [list(f) for f in value]


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


# --- the formats ---------------------------------------------------------------------------------------


@dataclass
class PromptRecord:
    """One line of ``prompts.jsonl``: a prompt someone wrote, before or after curation."""

    id: str
    prompt: Messages
    user_id: str
    family: str | None = None
    split: Literal["train", "valid", "test"] | None = None
    consent: bool | None = None
    meta: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, obj: Any, allow_empty: bool = False) -> PromptRecord:
        # allow_empty: accepted so every format reads alike; a prompt has no response to be empty
        o = _obj(obj, ("id", "prompt", "user_id", "family", "split", "consent", "meta"))
        split, consent, meta = o.get("split"), o.get("consent"), o.get("meta")
        if split is not None and split not in SPLITS:
            raise DataError(f"{split!r} is not one of {', '.join(SPLITS)}", "split")
        if consent is not None and not isinstance(consent, bool):
            raise DataError(f"expected true/false, got {consent!r}", "consent")
        if meta is not None and not isinstance(meta, dict):
            raise DataError("expected an object", "meta")
        prompt = _prompt(o)
        return cls(
            id=_str(o, "id", required=True, nonempty=True),  # type: ignore[arg-type]
            prompt=to_messages(prompt),  # type: ignore[arg-type]
            user_id=_str(o, "user_id", required=True, nonempty=True),  # type: ignore[arg-type]
            family=_str(o, "family"),
            split=split,
            consent=consent,
            meta=meta,
        )

    def to_json(self) -> dict[str, Any]:
        return _drop_none(self.__dict__.copy())


@dataclass
class Demonstration:
    """A written answer to a prompt, for SFT."""

    prompt: Prompt
    response: str
    user_id: str | None = None
    id: str | None = None
    labeler: str | None = None
    family: str | None = None
    policy: str | None = None
    time_spent_s: float | None = None  # seconds the labeler spent writing it

    @classmethod
    def from_json(cls, obj: Any, allow_empty: bool = False) -> Demonstration:
        o = _obj(obj, ("prompt", "response", "user_id", "id", "labeler", "family", "policy", "time_spent_s"))
        prompt = _prompt(o)
        response = check_response(_str(o, "response", required=True), "response", allow_empty)  # type: ignore[arg-type]
        return cls(prompt, response, _str(o, "user_id"), _str(o, "id"), _str(o, "labeler"),  # type: ignore[arg-type]
                   _str(o, "family"), _str(o, "policy"), _time(o))

    def to_json(self) -> dict[str, Any]:
        return _drop_none(self.__dict__.copy())


@dataclass
class SampleSet:
    """K responses to one prompt from a policy (what ``tiller sample`` writes), ready to rank."""

    id: str
    prompt: Messages
    responses: list[str]
    policy: str | None = None
    user_id: str | None = None
    family: str | None = None

    @classmethod
    def from_json(cls, obj: Any, allow_empty: bool = False) -> SampleSet:
        o = _obj(obj, ("id", "prompt", "responses", "policy", "user_id", "family"))
        return cls(
            id=_str(o, "id", required=True, nonempty=True),  # type: ignore[arg-type]
            prompt=to_messages(_prompt(o)),  # type: ignore[arg-type]
            responses=_responses(o, allow_empty=allow_empty),
            policy=_str(o, "policy"),
            user_id=_str(o, "user_id"),
            family=_str(o, "family"),
        )

    def to_json(self) -> dict[str, Any]:
        return _drop_none(self.__dict__.copy())


@dataclass
class Ranking:
    """One labeler's ranking of K responses to one prompt (``ranking`` holds groups, best first)."""

    prompt: Prompt
    responses: list[str]
    ranking: list[list[int]]
    labeler: str | None = None
    likert: list[int] | None = None
    flags: list[list[str]] | None = None
    id: str | None = None
    policy: str | None = None  # the sample set's metadata (SampleSet), kept through labeling
    user_id: str | None = None
    family: str | None = None
    time_spent_s: float | None = None  # seconds the labeler spent on it

    @classmethod
    def from_json(cls, obj: Any, allow_empty: bool = False) -> Ranking:
        o = _obj(obj, ("prompt", "responses", "ranking", "labeler", "likert", "flags", "id", "policy", "user_id",
                       "family", "time_spent_s"))
        prompt = _prompt(o)
        responses = _responses(o, allow_empty=allow_empty)
        k = len(responses)
        return cls(
            prompt=prompt,  # type: ignore[arg-type]
            responses=responses,
            ranking=_ranking(o.get("ranking"), k),
            labeler=_str(o, "labeler"),
            likert=_likert(o.get("likert"), k),
            flags=_flags(o.get("flags"), k),
            id=_str(o, "id"),
            policy=_str(o, "policy"),
            user_id=_str(o, "user_id"),
            family=_str(o, "family"),
            time_spent_s=_time(o),
        )

    def to_json(self) -> dict[str, Any]:
        return _drop_none(self.__dict__.copy())

    @property
    def messages(self) -> Messages:
        return to_messages(self.prompt)


@dataclass
class Pair:
    """A TRL-style preference pair: explicit ``prompt`` or implicit (the shared prefix of chosen/rejected).

    Text or conversational: with an explicit prompt, ``chosen``/``rejected`` are a string or a list holding
    one assistant message; with an implicit prompt, both are whole conversations (or whole texts)."""

    chosen: str | Messages
    rejected: str | Messages
    prompt: Prompt | None = None
    _resolved: tuple[Prompt, str, str] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Any, allow_empty: bool = False) -> Pair:
        o = _obj(obj, ("prompt", "chosen", "rejected"))
        for name in ("chosen", "rejected"):
            if _get(o, name, True) is None or not isinstance(o[name], str | list):
                raise DataError("expected a string or a list of messages", name)
        pair = cls(o["chosen"], o["rejected"], _prompt(o, required=False))
        pair.resolve(allow_empty)  # validate now, so a bad pair is refused on load with its field named
        return pair

    def resolve(self, allow_empty: bool = False) -> tuple[Prompt, str, str]:
        """(prompt, chosen answer, rejected answer) with an implicit prompt made explicit, as TRL's
        ``extract_prompt`` does: the longest shared prefix of messages, or for text of characters cut back
        to a word boundary."""
        if self._resolved is None:
            self._resolved = _resolve_pair(self.prompt, self.chosen, self.rejected, allow_empty)
        return self._resolved

    def to_json(self) -> dict[str, Any]:
        out = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        return _drop_none(out)


def _answer(value: str | Messages, name: str, allow_empty: bool = False) -> str:
    """An explicit-prompt completion: text, or a list of exactly one assistant message."""
    if isinstance(value, str):
        text = value
    else:
        try:
            msgs = to_messages(value)
        except ChatFormatError as e:
            raise DataError(str(e), name) from None
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise DataError("expected one assistant message after an explicit prompt", name)
        text = msgs[0]["content"]
    return check_response(text, name, allow_empty)


def _resolve_pair(
    prompt: Prompt | None, chosen: str | Messages, rejected: str | Messages, allow_empty: bool = False
) -> tuple[Prompt, str, str]:
    if prompt is not None:
        return prompt, _answer(chosen, "chosen", allow_empty), _answer(rejected, "rejected", allow_empty)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise DataError("chosen and rejected must both be text or both be messages", "rejected")
    if isinstance(chosen, str):
        # Text: the shared characters, as trl.data_utils.extract_prompt, but cut back to the last
        # whitespace so a word is never split ("...in the s" + "ky." / "ea."); the space goes with the answer.
        assert isinstance(rejected, str)
        idx = 0
        while idx < min(len(chosen), len(rejected)) and chosen[idx] == rejected[idx]:
            idx += 1
        space = max(chosen.rfind(" ", 0, idx), chosen.rfind("\n", 0, idx))
        if space > 0:
            idx = space
        text_prompt = {"prompt": chosen[:idx]}
        p = _prompt(text_prompt)
        return (p, _answer(chosen[idx:], "chosen", allow_empty),  # type: ignore[return-value]
                _answer(rejected[idx:], "rejected", allow_empty))
    convs = []
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        try:
            msgs = to_messages(conv)
        except ChatFormatError as e:
            raise DataError(str(e), name) from None
        if msgs[-1]["role"] != "assistant":
            raise DataError("an implicit-prompt conversation must end with an assistant message", name)
        convs.append(msgs)
    c, r = convs
    n = 0
    while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
        n += 1
    if len(c) != n + 1 or len(r) != n + 1:
        name = "chosen" if len(c) != n + 1 else "rejected"
        raise DataError("conversations differ before their last assistant message", name)
    p = _prompt({"prompt": c[:n]} if n else {}, required=True)
    return p, _answer(c[n:], "chosen", allow_empty), _answer(r[n:], "rejected", allow_empty)  # type: ignore[return-value]


def ranking_to_pairs(r: Ranking) -> list[Pair]:
    """Every ordered (better, worse) pair the ranking implies; responses tied in a group give no pair.

    [[0], [1, 2], [3]] -> 0>1, 0>2, 0>3, 1>3, 2>3 (5 pairs)."""
    pairs = []
    for gi, better in enumerate(r.ranking):
        for worse in r.ranking[gi + 1 :]:
            for a in better:
                for b in worse:
                    pairs.append(Pair(chosen=r.responses[a], rejected=r.responses[b], prompt=r.prompt))
    return pairs


def pair_to_ranking(p: Pair, labeler: str | None = None, id: str | None = None) -> Ranking:
    """A pair as a K=2 ranking (chosen first), with an implicit prompt made explicit."""
    prompt, chosen, rejected = p.resolve()
    return Ranking(prompt=prompt, responses=[chosen, rejected], ranking=[[0], [1]], labeler=labeler, id=id)


KINDS: dict[str, Any] = {
    "prompt": PromptRecord,
    "demonstration": Demonstration,
    "sample": SampleSet,
    "ranking": Ranking,
    "pair": Pair,
}


def kind_class(kind: str) -> Any:
    """The format class for a kind name (singular or plural: ``ranking``/``rankings``, ``demos``...)."""
    name = {"demo": "demonstration", "sampleset": "sample"}.get(kind.rstrip("s"), kind.rstrip("s"))
    if name not in KINDS:
        raise DataError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    return KINDS[name]
