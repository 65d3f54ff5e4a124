"""ASGI pieces the web app and the OpenAI-compatible server share.

Kept free of FastAPI and of every other tiller module, so both servers (and nothing else) build on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# (scope, limit) -> (content type, body) of the 413 answer, in the shape the server's clients expect
Refusal = Callable[[Scope, int], tuple[bytes, bytes]]


class BodyLimit:
    """A request body over the limit is refused with 413 before anything parses it: by its Content-Length,
    or, sent in chunks, as soon as the bytes read pass the limit. Web frameworks parse a body before any
    route code (a session or API-key check) runs, so without this anyone could make a server hold and parse
    50 MB of JSON (issue #15).

    ``limit`` is a number of bytes, or a function of the request's scope (the app allows admins' uploads a
    larger one); ``refusal`` writes the answer in the server's error shape."""

    def __init__(self, app: ASGIApp, limit: int | Callable[[Scope], int], refusal: Refusal) -> None:
        self.app, self.refusal = app, refusal
        self.limit_for = limit if callable(limit) else (lambda scope: limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(scope, send, limit)
            return
        seen, refused = 0, False

        async def counted() -> Message:  # a chunked body: answered 413 the moment it passes the limit
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit and not refused:
                refused = True
                await self._refuse(scope, send, limit)
                return {"type": "http.disconnect"}  # the app stops reading; what it answers is dropped
            return message

        async def guarded(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, guarded)

    async def _refuse(self, scope: Scope, send: Send, limit: int) -> None:
        kind, data = self.refusal(scope, limit)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", kind), (b"content-length", str(len(data)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": data})
