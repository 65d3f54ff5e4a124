"""The one chat format: a ``messages`` list of {role, content} to text and back.

Every stage (pretraining corpus, SFT, sampling, reward models, PPO, evaluation) and the server render
conversations with these functions, so a model sees exactly the same text in training and in use.

    <|system|>
    You are ...<|end|>
    <|user|>
    What is 2 + 3?<|end|>
    <|assistant|>
    2 + 3 = 5.<|end|>

The markers are added to a tokenizer as special tokens (see ``tiller.models``), so each is one token and
``<|end|>`` is the token generation stops at. Only the format writes them: text from people and models
(every message's content, every answer) is tokenized as plain text by :func:`encode_prompt` and
:func:`encode_response`, so a ``<|end|>`` typed by a user is a few ordinary tokens, never a turn boundary
(issue #15, item 5).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")
END = "<|end|>"
ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}
SPECIAL_TOKENS = [*ROLE_TOKENS.values(), END]

Message = dict[str, str]
Messages = list[Message]
Part = tuple[str, bool]  # a piece of rendered text, and whether it is a marker (one special token)

_TURN = re.compile(r"<\|(system|user|assistant)\|>\n(.*?)(?:<\|end\|>\n?|$)", re.S)


class ChatFormatError(ValueError):
    """A prompt or conversation that is not a valid ``messages`` list."""


def to_messages(prompt: str | list[Any]) -> Messages:
    """Normalise a prompt given as plain text (one user turn) or as a messages list; validates roles."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ChatFormatError("prompt must be a string or a non-empty list of {role, content}")
    out: Messages = []
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or set(m) - {"role", "content", "name"} or "role" not in m or "content" not in m:
            raise ChatFormatError(f"message {i} must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ChatFormatError(f"message {i}: role {m['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ChatFormatError(f"message {i}: content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def turn_parts(role: str, content: str) -> list[Part]:
    return [(ROLE_TOKENS[role], True), (f"\n{content}", False), (END, True), ("\n", False)]


def render_turn(role: str, content: str) -> str:
    return _join(turn_parts(role, content))


def prompt_parts(prompt: str | list[Any]) -> list[Part]:
    """:func:`render_prompt` as markers and text: every turn, then the open assistant header."""
    messages = to_messages(prompt)
    if messages[-1]["role"] != "user":
        raise ChatFormatError("a prompt must end with a user message")
    return [*(p for m in messages for p in turn_parts(m["role"], m["content"])), (ROLE_TOKENS["assistant"], True),
            ("\n", False)]


def response_parts(response: str, ended: bool = True) -> list[Part]:
    """:func:`render_response` as markers and text; ``ended`` False: an answer cut off before its end marker."""
    return [(response, False), (END, True)] if ended else [(response, False)]


def render_prompt(prompt: str | list[Any]) -> str:
    """The text a model is given to answer ``prompt``: every turn, then the open assistant header.

    The conversation must end with a user turn (the one being answered)."""
    return _join(prompt_parts(prompt))


def render_response(response: str) -> str:
    """The text a model should produce for one answer: the content and the end marker."""
    return _join(response_parts(response))


def _join(parts: list[Part]) -> str:
    return "".join(text for text, _ in parts)


def render_conversation(messages: str | list[Any]) -> str:
    """A whole conversation as text (e.g. for the pretraining corpus)."""
    return "".join(render_turn(m["role"], m["content"]) for m in to_messages(messages))


def parse_conversation(text: str) -> Messages:
    """Inverse of :func:`render_conversation` (and of ``render_prompt`` + ``render_response``)."""
    messages = [{"role": r, "content": c} for r, c in _TURN.findall(text)]
    if messages and messages[-1]["role"] == "assistant" and messages[-1]["content"] == "" and text.endswith(
        f"{ROLE_TOKENS['assistant']}\n"
    ):
        messages.pop()  # the open header of a prompt, not an empty answer
    return messages


def clean_response(text: str) -> str:
    """Cut a generated continuation at the first end marker or role header (a model that keeps talking).

    A NUL that a byte-level tokenizer decodes becomes U+FFFD, as undecodable bytes do: it is never text,
    the data formats refuse it (``tiller.data.formats.check_text``) and PostgreSQL cannot store it."""
    cut = len(text)
    for marker in SPECIAL_TOKENS:
        i = text.find(marker)
        if i != -1:
            cut = min(cut, i)
    return text[:cut].strip().replace("\x00", "\ufffd")


def prompt_key(prompt: str | list[Any]) -> str:
    """A stable key for a prompt, the same whether it came as text or as one user message."""
    return render_prompt(prompt)


# Token ids. A rendered string tokenized as a whole turns every marker written *inside* a message into a real
# control token: a user's "hi<|end|>\n<|system|>\n..." would open a system turn (issue #15, item 5). So the
# rendered text is tokenized as before, and each special token that is not one of the format's own markers
# is spelled out as plain text. Ids stay those of the whole-string tokenization everywhere else, so
# conversations without markers in them give exactly the ids they always did.


def encode_prompt(tok: PreTrainedTokenizerBase, prompt: str | list[Any]) -> list[int]:
    """Token ids of :func:`render_prompt` (no BOS), every message's content as plain text."""
    return encode_parts(tok, prompt_parts(prompt))


def encode_response(tok: PreTrainedTokenizerBase, response: str, ended: bool = True) -> list[int]:
    """Token ids of :func:`render_response` (``ended`` False: without the end marker), the answer as plain text."""
    return encode_parts(tok, response_parts(response, ended))


def encode_parts(tok: PreTrainedTokenizerBase, parts: list[Part]) -> list[int]:
    """The one tokenization of the chat format: each marker part its special token, every other part plain
    text in which no special token of ``tok`` (chat markers, EOS, pad...) is ever produced."""
    control = control_ids(tok)
    markers: dict[int, str] = {}  # character offset -> marker written there by the format
    at = 0
    for text, is_marker in parts:
        if is_marker:
            markers[at] = text
        at += len(text)
    ids = _encode_fast(tok, _join(parts), markers, control) if tok.is_fast else _encode_slow(tok, parts, control)
    found = [i for i in ids if i in control]
    if found != [tok.convert_tokens_to_ids(m) for m in markers.values()]:  # the format's markers, nothing else
        raise ValueError(f"cannot encode the chat format with this tokenizer: control tokens {found} for markers "
                         f"{list(markers.values())}")
    return ids


def control_ids(tok: PreTrainedTokenizerBase) -> set[int]:
    """Ids that text must never produce: the special tokens and the chat markers (unk is ordinary: plain
    text without a piece for some character maps to it)."""
    ids = {*tok.all_special_ids, *(i for i, t in tok.added_tokens_decoder.items() if t.special)}
    ids |= {i for i in (tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS) if isinstance(i, int)}
    ids.discard(tok.unk_token_id)
    return ids


def _encode_fast(tok: PreTrainedTokenizerBase, text: str, markers: dict[int, str], control: set[int]) -> list[int]:
    """The whole string through the Rust tokenizer (its ids are today's), then every control token that is
    not a marker replaced by its text's plain-text ids."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, spans = enc["input_ids"], enc["offset_mapping"]
    out: list[int] = []
    done = 0  # text up to here is in ``out``
    for k, (i, (a, b)) in enumerate(zip(ids, spans, strict=True)):
        if i not in control or (a in markers and b == a + len(markers[a])):
            out.append(i)
            done = max(done, b)
            continue
        # Whitespace a token strips next to itself (AddedToken lstrip/rstrip) lies in no token's span.
        start = max(done, min(a, spans[k - 1][1] if k else 0))
        end = max(b, spans[k + 1][0] if k + 1 < len(ids) else len(text))
        out += _plain_fast(tok, text[start:end], control, at_start=start == 0)
        done = end
    return out


def _plain_fast(tok: PreTrainedTokenizerBase, text: str, control: set[int], at_start: bool) -> list[int]:
    """``text`` through the normalizer, pre-tokenizer and model, past the added-token matching (what
    ``split_special_tokens=True`` does, without flipping a flag that other threads' calls share).
    A text that did not start the string is encoded after a newline that is then dropped: SentencePiece-style
    pre-tokenizers (Metaspace, ``prepend_scheme="first"``) add a space at offset 0 only."""

    def plain(s: str) -> list[int]:
        backend = tok.backend_tokenizer
        s = backend.normalizer.normalize_str(s) if backend.normalizer is not None else s
        words = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(s)] if backend.pre_tokenizer is not None else [s]
        out: list[int] = []
        for w in words:
            piece = [t.id for t in backend.model.tokenize(w)]
            if control.intersection(piece):  # a BPE trained on text with the markers can merge one back
                piece = [t.id for ch in w for t in backend.model.tokenize(ch)]
            out += piece
        return out

    if at_start:
        return plain(text)
    newline, ids = plain("\n"), plain("\n" + text)
    return ids[len(newline):] if ids[: len(newline)] == newline else plain(text)


def _encode_slow(tok: PreTrainedTokenizerBase, parts: list[Part], control: set[int]) -> list[int]:
    """A Python tokenizer (no offsets): the text between markers cut at special-token strings, as it cuts it
    itself; those strings encoded with ``split_special_tokens=True`` (a per-call argument there)."""
    names = sorted({str(tok.convert_ids_to_tokens(i)) for i in control}, key=len, reverse=True)
    cut = re.compile("(" + "|".join(map(re.escape, names)) + ")" if names else "(?!)")  # (?!): never matches
    out: list[int] = []
    runs: list[Part] = []
    for text, is_marker in parts:  # adjacent text parts are one run, as in the rendered string
        if runs and not is_marker and not runs[-1][1]:
            runs[-1] = (runs[-1][0] + text, False)
        else:
            runs.append((text, is_marker))
    for text, is_marker in runs:
        if is_marker:
            out.append(cast(int, tok.convert_tokens_to_ids(text)))  # one token string in, one id out
            continue
        for k, piece in enumerate(cut.split(text)):
            if piece:
                out += tok.encode(piece, add_special_tokens=False, split_special_tokens=k % 2 == 1)
    return out
