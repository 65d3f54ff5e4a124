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
``<|end|>`` is the token generation stops at.
"""

from __future__ import annotations

import re
from typing import Any

ROLES = ("system", "user", "assistant")
END = "<|end|>"
ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}
SPECIAL_TOKENS = [*ROLE_TOKENS.values(), END]

Message = dict[str, str]
Messages = list[Message]

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


def render_turn(role: str, content: str) -> str:
    return f"{ROLE_TOKENS[role]}\n{content}{END}\n"


def render_prompt(prompt: str | list[Any]) -> str:
    """The text a model is given to answer ``prompt``: every turn, then the open assistant header.

    The conversation must end with a user turn (the one being answered)."""
    messages = to_messages(prompt)
    if messages[-1]["role"] != "user":
        raise ChatFormatError("a prompt must end with a user message")
    return "".join(render_turn(m["role"], m["content"]) for m in messages) + f"{ROLE_TOKENS['assistant']}\n"


def render_response(response: str) -> str:
    """The text a model should produce for one answer: the content and the end marker."""
    return f"{response}{END}"


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
    """Cut a generated continuation at the first end marker or role header (a model that keeps talking)."""
    cut = len(text)
    for marker in SPECIAL_TOKENS:
        i = text.find(marker)
        if i != -1:
            cut = min(cut, i)
    return text[:cut].strip()


def prompt_key(prompt: str | list[Any]) -> str:
    """A stable key for a prompt, the same whether it came as text or as one user message."""
    return render_prompt(prompt)
