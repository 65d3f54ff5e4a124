"""The chat playground: conversations, stored prompts (with consent), thumbs and two-answer comparisons.

Generation is not here (it is slow and streamed); the routes call the engine between these writes.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tiller.data.formats import clean_text

from ..db import end_read, writing
from ..errors import Conflict, Invalid, NotFound
from ..models import ChatComparison, ChatMessage, ChatPrompt, Conversation, User


def create_conversation(session: Session, user: User, model: str, models: dict[str, str]) -> Conversation:
    if model not in models:
        raise Invalid(f"unknown model {model!r}; available: {', '.join(models) or 'none'}")
    with writing(session):
        conv = Conversation(user_id=user.id, model=model)
        session.add(conv)
    return conv


def get_conversation(session: Session, user: User, conversation_id: int) -> Conversation:
    """A user's own conversation; anyone else's is 404 (admins included: chats are private)."""
    conv = session.get(Conversation, conversation_id)
    if conv is None or conv.user_id != user.id:
        raise NotFound(f"no conversation {conversation_id}")
    return conv


def history(conv: Conversation) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in conv.messages]


def _append(session: Session, conv: Conversation, role: str, content: str) -> ChatMessage:
    pos = session.scalar(select(func.count()).where(ChatMessage.conversation_id == conv.id)) or 0
    msg = ChatMessage(conversation_id=conv.id, position=pos, role=role, content=content)
    session.add(msg)
    return msg


def next_prompt(session: Session, user: User, conversation_id: int, content: str) -> list[dict]:
    """The prompt a new user turn makes (the whole history, then ``content``), writing nothing: a turn is
    stored only with its answer (:func:`add_exchange`), so a turn that failed (too long for the model,
    generation error, the client left) leaves no trace and the chat goes on (issue #15)."""
    conv = get_conversation(session, user, conversation_id)
    messages = history(conv)
    messages.append({"role": "user", "content": content})
    end_read(session)
    return messages


def _add_turn(session: Session, user: User, conv: Conversation, prompt: list[dict], consent: bool) -> None:
    """Store the user's turn (the last message of ``prompt``) and the prompt it makes, with its consent.

    The history must still be the one the answer was generated for: a turn finished meanwhile in another
    tab would put this answer after a question it never saw."""
    session.expire(conv, ["messages"])  # read the history as it is now, not as this session last saw it
    if history(conv) != prompt[:-1]:
        raise Conflict("the conversation changed while this answer was generated; reload it and try again")
    _append(session, conv, "user", prompt[-1]["content"])
    session.add(ChatPrompt(conversation_id=conv.id, user_id=user.id, prompt=prompt, consent=consent))


def add_exchange(
    session: Session, user: User, conversation_id: int, prompt: list[dict], consent: bool, answer: str
) -> ChatMessage:
    """Store a user turn and the model's answer to it, together (one transaction)."""
    with writing(session):
        conv = get_conversation(session, user, conversation_id)
        _add_turn(session, user, conv, prompt, consent)
        msg = _append(session, conv, "assistant", clean_text(answer))
    return msg


def add_assistant_turn(session: Session, user: User, conversation_id: int, content: str) -> ChatMessage:
    with writing(session):
        conv = get_conversation(session, user, conversation_id)
        msg = _append(session, conv, "assistant", clean_text(content))
    return msg


def rate_message(session: Session, user: User, message_id: int, value: int) -> ChatMessage:
    with writing(session):
        msg = session.get(ChatMessage, message_id)
        if msg is None:
            raise NotFound(f"no message {message_id}")
        get_conversation(session, user, msg.conversation_id)  # ownership
        if msg.role != "assistant":
            raise Invalid("only answers can be rated")
        msg.rating = value
    return msg


def create_comparison(
    session: Session, user: User, conversation_id: int, prompt: list[dict], responses: list[str], consent: bool
) -> ChatComparison:
    """Store the user's turn and two answers to it (the user picks one with :func:`choose`), together."""
    with writing(session):
        conv = get_conversation(session, user, conversation_id)
        _add_turn(session, user, conv, prompt, consent)
        comp = ChatComparison(conversation_id=conv.id, prompt=prompt, responses=[clean_text(r) for r in responses])
        session.add(comp)
    return comp


def choose(session: Session, user: User, comparison_id: int, choice: int) -> ChatMessage:
    """Record which of the two answers the user preferred; the preferred one continues the conversation."""
    with writing(session):
        comp = session.get(ChatComparison, comparison_id)
        if comp is None:
            raise NotFound(f"no comparison {comparison_id}")
        conv = get_conversation(session, user, comp.conversation_id)
        if comp.choice is not None:
            raise Conflict("this comparison is already decided")
        comp.choice = choice
        msg = _append(session, conv, "assistant", comp.responses[choice])
    return msg
