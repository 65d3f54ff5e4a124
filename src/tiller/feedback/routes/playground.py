"""The chat playground: a page, and a JSON API whose answers stream as server-sent events."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from tiller.data.formats import clean_text

from ...chat import clean_response
from ..db import write_session
from ..deps import CurrentUser, Db
from ..engines import chat_engine
from ..errors import Invalid, ServiceError
from ..models import User
from ..schemas import (
    ChoiceCreate,
    ComparisonPublic,
    ConversationCreate,
    ConversationPublic,
    DbId,
    RatingCreate,
    TurnCreate,
)
from ..services import playground as chat
from ..web import render

router = APIRouter()


def sse(data: dict, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.get("/playground")
def playground_page(request: Request, user: CurrentUser) -> Response:
    return render(request, "playground.html", {"models": list(request.app.state.models)})


@router.post("/api/chat/conversations", status_code=201)
def new_conversation(request: Request, db: Db, user: CurrentUser, body: ConversationCreate) -> ConversationPublic:
    conv = chat.create_conversation(db, user, body.model, request.app.state.models)
    return ConversationPublic(id=conv.id, model=conv.model, messages=[])


@router.get("/api/chat/conversations/{conversation_id}")
def get_conversation(db: Db, user: CurrentUser, conversation_id: DbId) -> ConversationPublic:
    conv = chat.get_conversation(db, user, conversation_id)
    messages = [{"id": m.id, "role": m.role, "content": clean_text(m.content), "rating": m.rating}
                for m in conv.messages]
    return ConversationPublic(id=conv.id, model=conv.model, messages=messages)


def _too_long(e: ValueError) -> Invalid:
    return Invalid(f"the model cannot answer this turn ({e}). Nothing was stored: send a shorter message, "
                   "or start a new chat if the conversation itself has grown too long.")


@router.post("/api/chat/conversations/{conversation_id}/turn")
def turn(request: Request, db: Db, user: CurrentUser, conversation_id: DbId, body: TurnCreate) -> StreamingResponse:
    """Stream the answer token by token (``text/event-stream``), then store the user's turn with it.

    A turn the engine refuses (longer than the model's context) is a 422 before anything streams; one
    whose generation fails later is an in-band ``error`` event. Either way nothing is stored."""
    engine = chat_engine(request.app, chat.get_conversation(db, user, conversation_id).model)
    prompt = chat.next_prompt(db, user, conversation_id, body.content)
    try:  # the engine checks the prompt (and its length) here, before the first token
        generation = engine.stream(prompt, max_new_tokens=body.max_new_tokens, temperature=body.temperature,
                                   seed=body.seed)
    except ValueError as e:
        raise _too_long(e) from None
    factory, user_id = request.app.state.sessions, user.id

    def events() -> Iterator[str]:
        parts: list[str] = []
        try:
            for delta in generation:
                parts.append(delta)
                yield sse({"delta": delta})
        except Exception as e:  # the stream has started: report in-band, the status is already 200
            yield sse({"detail": f"generation failed: {e}. Nothing was stored; send the turn again."},
                      event="error")
            return
        finally:  # also when the client goes away: frees the engine for the next request
            if hasattr(generation, "close"):
                generation.close()
        text = clean_response("".join(parts))
        try:
            with write_session(factory) as s:
                owner = s.get(User, user_id)
                assert owner is not None
                msg = chat.add_exchange(s, owner, conversation_id, prompt, body.consent, text)
        except ServiceError as e:
            yield sse({"detail": e.detail}, event="error")
            return
        yield sse({"message_id": msg.id, "content": msg.content}, event="done")

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@router.post("/api/chat/conversations/{conversation_id}/compare", status_code=201)
def compare(request: Request, db: Db, user: CurrentUser, conversation_id: DbId, body: TurnCreate) -> ComparisonPublic:
    """Two sampled answers to the user's message; the user then picks the better one (``choose``).
    The turn and both answers are stored together, only once both exist."""
    engine = chat_engine(request.app, chat.get_conversation(db, user, conversation_id).model)
    prompt = chat.next_prompt(db, user, conversation_id, body.content)
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31 - 1)
    try:  # two samples with different seeds (the engine serialises generation itself)
        answers = [
            clean_response(engine.complete(prompt, max_new_tokens=body.max_new_tokens,
                                           temperature=max(body.temperature, 0.7), seed=seed + i)[0])
            for i in range(2)
        ]
    except ValueError as e:
        raise _too_long(e) from None
    comp = chat.create_comparison(db, user, conversation_id, prompt, answers, body.consent)
    return ComparisonPublic(id=comp.id, responses=list(comp.responses))


@router.post("/api/chat/comparisons/{comparison_id}/choose")
def choose(db: Db, user: CurrentUser, comparison_id: DbId, body: ChoiceCreate) -> dict:
    msg = chat.choose(db, user, comparison_id, body.choice)
    return {"message_id": msg.id, "content": msg.content}


@router.post("/api/chat/messages/{message_id}/rating")
def rate(db: Db, user: CurrentUser, message_id: DbId, body: RatingCreate) -> dict:
    msg = chat.rate_message(db, user, message_id, body.value)
    return {"message_id": msg.id, "rating": msg.rating}
