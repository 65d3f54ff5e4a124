"""OpenAI-compatible HTTP API over a :class:`ChatEngine`, so any OpenAI client can talk to a tiller model.

Routes stay thin; generation is the engine's. Every error leaves in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` so clients raise their usual exceptions.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tiller.asgi import BodyLimit, Scope
from tiller.chat import ChatFormatError
from tiller.serve.engine import ChatEngine, Generation, PromptTooLongError
from tiller.serve.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ErrorBody,
    ErrorResponse,
    ModelCard,
    ModelList,
    UsageOut,
    completion_id,
    now,
)

v1 = APIRouter()
router = APIRouter()  # /health stays open (load balancers probe it); /v1 routes check the API key


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.body = status, ErrorBody(message=message, type=type, param=param, code=code)


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=err.body).model_dump(), status_code=err.status)


MAX_BODY = 1 << 20  # bytes of one request body: a long conversation is tens of kilobytes

def _too_large(scope: Scope, limit: int) -> tuple[bytes, bytes]:
    """The 413 of :class:`tiller.asgi.BodyLimit` in OpenAI's error shape."""
    body = ErrorResponse(error=ErrorBody(message=f"the request body is over {limit} bytes",
                                         type="invalid_request_error", code="request_too_large"))
    return b"application/json", body.model_dump_json().encode()


def get_engine(request: Request) -> ChatEngine:
    return request.app.state.engine  # type: ignore[no-any-return]


def check_api_key(request: Request) -> None:
    """With API keys set, every /v1 route needs ``Authorization: Bearer KEY`` (what OpenAI clients send)."""
    keys: list[str] = request.app.state.api_keys
    if not keys:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(given.strip().encode(), k.encode()) for k in keys):
        raise APIError(401, "Incorrect or missing API key: send `Authorization: Bearer KEY` (the server's "
                       "--api-key / TILLER_API_KEY)", code="invalid_api_key")


def _check_model(engine: ChatEngine, model: str) -> None:
    if model != engine.model_name:
        raise APIError(
            404,
            f"The model `{model}` does not exist; this server has `{engine.model_name}`.",
            param="model",
            code="model_not_found",
        )


def _start(engine: ChatEngine, req: ChatCompletionRequest, default_max_tokens: int, index: int) -> Generation:
    """Validate and tokenize now (errors become 400s before any output); generation runs on iteration."""
    kwargs: dict[str, Any] = {}
    if req.temperature is not None:
        kwargs["temperature"] = req.temperature
    try:
        return engine.stream(
            [m.to_chat() for m in req.messages],
            max_new_tokens=req.max_completion_tokens or req.max_tokens or default_max_tokens,
            top_p=req.top_p,
            seed=None if req.seed is None else req.seed + index,  # n > 1 must not give n copies
            stop=req.stop_list(),
            **kwargs,
        )
    except ChatFormatError as e:
        raise APIError(400, str(e), param="messages") from e
    except PromptTooLongError as e:
        raise APIError(400, str(e), param="messages", code="context_length_exceeded") from e


def _usage_out(prompt_tokens: int, completion_tokens: int) -> UsageOut:
    return UsageOut(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _start_and_drain(engine: ChatEngine, req: ChatCompletionRequest, default_max_tokens: int, index: int) -> Generation:
    """One whole answer, tokenizing included (a worker thread's job: never the event loop's)."""
    generation = _start(engine, req, default_max_tokens, index)
    for _ in generation:
        pass
    return generation


async def _sse(generation: Generation, model: str, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events as OpenAI streams them: role first, content deltas, finish, [DONE]."""
    cid, created = completion_id(), now()

    def event(choices: list[ChunkChoice], usage: UsageOut | None = None) -> str:
        chunk = ChatCompletionChunk(id=cid, created=created, model=model, choices=choices, usage=usage)
        return f"data: {chunk.model_dump_json()}\n\n"

    try:
        yield event([ChunkChoice(delta=Delta(role="assistant", content=""))])
        while True:
            # The model runs in a worker thread; the event loop keeps serving other requests.
            delta = await run_in_threadpool(next, generation, None)
            if delta is None:
                break
            yield event([ChunkChoice(delta=Delta(content=delta))])
        usage = generation.usage
        assert usage is not None
        yield event([ChunkChoice(delta=Delta(), finish_reason=usage["finish_reason"])])
        if include_usage:
            yield event([], _usage_out(usage["prompt_tokens"], usage["completion_tokens"]))
        yield "data: [DONE]\n\n"
    except Exception as e:  # headers are sent already: report in-band, as OpenAI does
        body = ErrorBody(message=f"generation failed: {e}", type="server_error")
        yield f"data: {json.dumps({'error': body.model_dump()})}\n\n"
    finally:
        generation.close()  # a client that left early frees the engine's lock now


@v1.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    req: ChatCompletionRequest, request: Request, engine: ChatEngine = Depends(get_engine)
) -> Any:
    _check_model(engine, req.model)
    default_max_tokens: int = request.app.state.default_max_tokens
    if req.stream:
        if req.n != 1:
            raise APIError(400, "n > 1 is not supported with stream", param="n")
        # tokenizing a long prompt takes a while: off the event loop, as generation is
        generation = await run_in_threadpool(_start, engine, req, default_max_tokens, 0)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            _sse(generation, engine.model_name, include_usage), media_type="text/event-stream"
        )
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for i in range(req.n):
        done = await run_in_threadpool(_start_and_drain, engine, req, default_max_tokens, i)
        assert done.usage is not None
        choices.append(
            Choice(
                index=i,
                message=AssistantMessage(content=done.text),
                finish_reason=done.usage["finish_reason"],
            )
        )
        prompt_tokens = done.usage["prompt_tokens"]  # the same prompt for every choice, counted once
        completion_tokens += done.usage["completion_tokens"]
    return ChatCompletion(
        id=completion_id(),
        created=now(),
        model=engine.model_name,
        choices=choices,
        usage=_usage_out(prompt_tokens, completion_tokens),
    )


@v1.get("/v1/models", response_model=ModelList)
def list_models(request: Request, engine: ChatEngine = Depends(get_engine)) -> ModelList:
    return ModelList(data=[ModelCard(id=engine.model_name, created=request.app.state.started)])


@v1.get("/v1/models/{model:path}", response_model=ModelCard)
def get_model(model: str, request: Request, engine: ChatEngine = Depends(get_engine)) -> ModelCard:
    _check_model(engine, model)
    return ModelCard(id=engine.model_name, created=request.app.state.started)


@router.get("/health")
def health(engine: ChatEngine = Depends(get_engine)) -> dict[str, str]:
    return {"status": "ok", "model": engine.model_name}


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return _error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    # OpenAI answers a malformed body with 400, not FastAPI's 422.
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"type": "", "loc": (), "msg": "invalid request"}
    if first["type"] == "json_invalid":
        return _error_response(APIError(400, "the request body is not valid JSON"))
    param = ".".join(str(p) for p in first["loc"] if p != "body") or None
    return _error_response(APIError(400, f"{param or 'body'}: {first['msg']}", param=param))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return _error_response(APIError(exc.status_code, str(exc.detail), type=kind))


def create_app(engine: ChatEngine, default_max_tokens: int = 512, api_keys: list[str] | None = None,
               max_body: int = MAX_BODY) -> FastAPI:
    """The server app; ``default_max_tokens`` caps answers when a request gives no ``max_tokens``;
    ``api_keys``: if any, the keys a client must send; ``max_body``: the largest request body in bytes."""
    app = FastAPI(title="tiller", summary="OpenAI-compatible chat API for a tiller model")
    app.state.engine = engine
    app.state.default_max_tokens = default_max_tokens
    app.state.api_keys = [k for k in api_keys or [] if k]
    app.add_middleware(BodyLimit, limit=max_body, refusal=_too_large)
    app.state.started = now()
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(router)
    app.include_router(v1, dependencies=[Depends(check_api_key)])
    return app
