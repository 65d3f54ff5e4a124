"""Importers for public preference data, each giving native :class:`Ranking` records (K = 2).

- Anthropic HH-RLHF (Bai et al. 2022): ``{"chosen", "rejected"}``, each a whole dialogue of
  ``\\n\\nHuman: `` / ``\\n\\nAssistant: `` turns; the prompt is the shared dialogue up to the final
  Assistant turn.
- OpenAI summarize-from-feedback comparisons (Stiennon et al. 2020): ``info``, ``summaries``, ``choice``,
  ``worker``, ``split``; one record per worker's comparison, labeler = worker.
- TRL-style pairs: ``{"prompt"?, "chosen", "rejected"}``, text or conversational; extra columns ignored.

Each importer reads any file :func:`tiller.data.io.iter_rows` reads and, like ``read_records``, refuses a
bad line naming file, line and field, or with ``skip_bad`` skips it and lists it in ``problems``.

An empty answer is *kept* by the HH-RLHF and pairs importers: in harmless data a labeler preferring no
reply is a real preference (4 of the 2,312 lines of the harmless-base test file). The count is logged in
one line (:func:`count_empty`); files holding such records are read back with ``allow_empty=True``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tiller.chat import Messages
from tiller.data.formats import DataError, Pair, Ranking, check_text, pair_to_ranking
from tiller.data.io import RecordList, convert_rows

log = logging.getLogger(__name__)
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_hh_dialogue(text: str, field: str = "chosen") -> Messages:
    """``\\n\\nHuman: a\\n\\nAssistant: b`` -> messages. Text before the first turn is refused."""
    parts = _TURN.split(text)
    if parts[0].strip():
        raise DataError("text before the first '\\n\\nHuman:' turn", field)
    messages = []
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": _ROLE[role], "content": content.strip()})
    if not messages:
        raise DataError("no '\\n\\nHuman:' / '\\n\\nAssistant:' turns", field)
    return messages


def hh_to_ranking(row: Any, id: str | None = None) -> Ranking:
    """One HH-RLHF line as a K=2 ranking (chosen first).

    The prompt is the dialogue both texts share up to the last ``\\n\\nAssistant:`` they share; each answer
    is the rest of its text. In well-formed lines that is the final Assistant turn. In a few real lines the
    model kept talking (``... Human: ...`` inside its answer) and the two texts part earlier; the rest is
    then what that model said, kept as its answer, as the labeler saw it. An empty answer is kept (see above)."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}")
    for name in ("chosen", "rejected"):
        if not isinstance(row.get(name), str):
            raise DataError("missing" if row.get(name) is None else "expected a string", name)
        check_text(row[name], name)
    chosen, rejected = row["chosen"], row["rejected"]
    common = 0
    while common < min(len(chosen), len(rejected)) and chosen[common] == rejected[common]:
        common += 1
    cut = chosen.rfind(ASSISTANT, 0, common)  # the last turn marker both texts contain whole
    if cut == -1:
        raise DataError("chosen and rejected share no dialogue ending in '\\n\\nAssistant:'", "rejected")
    prompt = parse_hh_dialogue(chosen[:cut])
    if prompt[-1]["role"] != "user":
        raise DataError("the shared dialogue does not end with a Human turn", "chosen")
    answers = [chosen[cut + len(ASSISTANT) :].strip(), rejected[cut + len(ASSISTANT) :].strip()]
    return Ranking(prompt=prompt, responses=answers, ranking=[[0], [1]], id=id)


def import_hh_rlhf(path: str | Path, skip_bad: bool = False) -> RecordList[Ranking]:
    """HH-RLHF JSONL (``.gz`` fine) -> rankings, ids ``hh-LINE`` (``hh-rINDEX`` for non-JSONL files)."""

    def convert(row: Any, loc: dict[str, int]) -> Ranking:
        return hh_to_ranking(row, id=f"hh-{loc['line']}" if "line" in loc else f"hh-r{loc['record']}")

    return _note_empty(path, convert_rows(path, convert, skip_bad, located=True))


def count_empty(records: list[Ranking]) -> int:
    """Records with at least one empty (whitespace-only) answer."""
    return sum(any(not r.strip() for r in rec.responses) for rec in records)


def _note_empty(path: str | Path, records: RecordList[Ranking]) -> RecordList[Ranking]:
    n = count_empty(records)
    if n:
        log.warning("%s: %d of %d rankings have an empty answer (kept; read them back with allow_empty=True)",
                    path, n, len(records))
    return records


def summarize_prompt(info: dict[str, Any]) -> str:
    """The query as in Stiennon et al. 2020 (appendix): subreddit, title and post, then ``TL;DR:``."""
    if info.get("post"):
        parts = []
        if info.get("subreddit"):
            parts.append(f"SUBREDDIT: r/{info['subreddit']}")
        if info.get("title"):
            parts.append(f"TITLE: {info['title']}")
        parts.append(f"POST: {info['post']}")
        return "\n".join(parts) + "\n\nTL;DR:"
    if info.get("article"):  # the CNN/DM part
        title = f"TITLE: {info['title']}\n" if info.get("title") else ""
        return f"{title}ARTICLE: {info['article']}\n\nTL;DR:"
    raise DataError("needs a non-empty 'post' or 'article'", "info")


def summarize_to_ranking(row: Any) -> Ranking:
    """One summarize-from-feedback comparison -> a K=2 ranking, the chosen summary first in ``ranking``."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}")
    info, summaries, choice, worker = (row.get(k) for k in ("info", "summaries", "choice", "worker"))
    if not isinstance(info, dict):
        raise DataError("missing" if info is None else "expected an object", "info")
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise DataError("expected a list of 2 summaries", "summaries")
    texts = []
    for i, s in enumerate(summaries):
        if not isinstance(s, dict) or not isinstance(s.get("text"), str) or not s["text"].strip():
            raise DataError("expected an object with a non-empty 'text'", f"summaries[{i}]")
        texts.append(check_text(s["text"].strip(), f"summaries[{i}]"))
    if choice not in (0, 1) or isinstance(choice, bool):
        raise DataError(f"expected 0 or 1, got {choice!r}", "choice")
    if worker is not None and not isinstance(worker, str):
        raise DataError("expected a string", "worker")
    id_ = info.get("id")
    return Ranking(
        prompt=check_text(summarize_prompt(info), "info"),
        responses=texts,
        ranking=[[choice], [1 - choice]],
        labeler=worker,
        id=str(id_) if id_ is not None else None,
    )


def import_summarize(
    path: str | Path, split: str | None = None, skip_bad: bool = False
) -> RecordList[Ranking]:
    """summarize-from-feedback comparisons -> rankings; ``split`` keeps only rows of that split."""
    out: RecordList[Ranking] = RecordList()
    kept = convert_rows(
        path,
        lambda row: (row.get("split") if isinstance(row, dict) else None, summarize_to_ranking(row)),
        skip_bad,
    )
    out.extend(r for s, r in kept if split is None or s == split)
    out.problems = kept.problems
    return out


_PAIR_KEYS = ("prompt", "chosen", "rejected")


def trl_pair(row: Any) -> Pair:
    """A TRL preference row as a :class:`Pair`; columns other than prompt/chosen/rejected are ignored."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}")
    return Pair.from_json({k: row[k] for k in _PAIR_KEYS if row.get(k) is not None}, allow_empty=True)


def import_pairs(path: str | Path, skip_bad: bool = False) -> RecordList[Ranking]:
    """TRL-style pairs (explicit or implicit prompt, text or conversational) -> K=2 rankings."""
    return _note_empty(path, convert_rows(path, lambda row: pair_to_ranking(trl_pair(row)), skip_bad))


IMPORTERS: dict[str, Callable[..., RecordList[Ranking]]] = {"hh-rlhf": import_hh_rlhf, "summarize": import_summarize, "pairs": import_pairs}
