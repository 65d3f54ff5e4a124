"""The chat playground: conversations, stored prompts (with consent), thumbs and two-answer comparisons.

Generation is not here (it is slow and streamed); the routes call the engine between these writes.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db import writing
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


def add_user_turn(session: Session, user: User, conversation_id: int, content: str, consent: bool) -> list[dict]:
    """Store the user's message and the prompt it makes (whole history + this turn); returns that prompt."""
    with writing(session):
        conv = get_conversation(session, user, conversation_id)
        # An earlier turn whose answer never came (generation failed, the client left) stays in the
        # history as is: two user turns in a row are a valid conversation, and the chat goes on.
        messages = history(conv)
        messages.append({"role": "user", "content": content})
        _append(session, conv, "user", content)
        session.add(ChatPrompt(conversation_id=conv.id, user_id=user.id, prompt=messages, consent=consent))
    return messages


def add_assistant_turn(session: Session, user: User, conversation_id: int, content: str) -> ChatMessage:
    with writing(session):
        conv = get_conversation(session, user, conversation_id)
        msg = _append(session, conv, "assistant", content)
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
    session: Session, user: User, conversation_id: int, prompt: list[dict], responses: list[str]
) -> ChatComparison:
    with writing(session):
        conv = get_conversation(session, user, conversation_id)
        comp = ChatComparison(conversation_id=conv.id, prompt=prompt, responses=responses)
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
