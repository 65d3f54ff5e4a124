"""The chat playground: a page, and a JSON API whose answers stream as server-sent events."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ...chat import clean_response
from ..db import write_session
from ..deps import CurrentUser, Db
from ..engines import chat_engine
from ..models import User
from ..schemas import (
    ChoiceCreate,
    ComparisonPublic,
    ConversationCreate,
    ConversationPublic,
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
def get_conversation(db: Db, user: CurrentUser, conversation_id: int) -> ConversationPublic:
    conv = chat.get_conversation(db, user, conversation_id)
    messages = [{"id": m.id, "role": m.role, "content": m.content, "rating": m.rating} for m in conv.messages]
    return ConversationPublic(id=conv.id, model=conv.model, messages=messages)


@router.post("/api/chat/conversations/{conversation_id}/turn")
def turn(request: Request, db: Db, user: CurrentUser, conversation_id: int, body: TurnCreate) -> StreamingResponse:
    """Store the user's message, then stream the answer token by token (``text/event-stream``)."""
    engine = chat_engine(request.app, chat.get_conversation(db, user, conversation_id).model)
    prompt = chat.add_user_turn(db, user, conversation_id, body.content, body.consent)
    factory, user_id = request.app.state.sessions, user.id

    def events() -> Iterator[str]:
        parts: list[str] = []
        generation = None
        try:
            generation = engine.stream(prompt, max_new_tokens=body.max_new_tokens, temperature=body.temperature,
                                       seed=body.seed)
            for delta in generation:
                parts.append(delta)
                yield sse({"delta": delta})
        except Exception as e:  # the stream has started: report in-band, the status is already 200
            yield sse({"detail": f"generation failed: {e}"}, event="error")
            return  # no answer is stored; the user's turn is, and the chat can go on
        finally:  # also when the client goes away: frees the engine for the next request
            if generation is not None and hasattr(generation, "close"):
                generation.close()
        text = clean_response("".join(parts))
        with write_session(factory) as s:
            owner = s.get(User, user_id)
            assert owner is not None
            msg = chat.add_assistant_turn(s, owner, conversation_id, text)
            yield sse({"message_id": msg.id, "content": text}, event="done")

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@router.post("/api/chat/conversations/{conversation_id}/compare", status_code=201)
def compare(request: Request, db: Db, user: CurrentUser, conversation_id: int, body: TurnCreate) -> ComparisonPublic:
    """Two sampled answers to the user's message; the user then picks the better one (``choose``)."""
    engine = chat_engine(request.app, chat.get_conversation(db, user, conversation_id).model)
    prompt = chat.add_user_turn(db, user, conversation_id, body.content, body.consent)
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31 - 1)
    # Two samples with different seeds (the engine serialises generation itself).
    answers = [
        clean_response(engine.complete(prompt, max_new_tokens=body.max_new_tokens,
                                       temperature=max(body.temperature, 0.7), seed=seed + i)[0])
        for i in range(2)
    ]
    comp = chat.create_comparison(db, user, conversation_id, prompt, answers)
    return ComparisonPublic(id=comp.id, responses=answers)


@router.post("/api/chat/comparisons/{comparison_id}/choose")
def choose(db: Db, user: CurrentUser, comparison_id: int, body: ChoiceCreate) -> dict:
    msg = chat.choose(db, user, comparison_id, body.choice)
    return {"message_id": msg.id, "content": msg.content}


@router.post("/api/chat/messages/{message_id}/rating")
def rate(db: Db, user: CurrentUser, message_id: int, body: RatingCreate) -> dict:
    msg = chat.rate_message(db, user, message_id, body.value)
    return {"message_id": msg.id, "rating": msg.rating}
