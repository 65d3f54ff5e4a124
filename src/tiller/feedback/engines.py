"""Chat engines for the playground, loaded on first use and kept for the life of the app."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from .errors import Invalid


def default_engine_factory(model_path: str) -> Any:
    from tiller.serve.engine import ChatEngine  # imported late: torch is only needed for the playground

    return ChatEngine(model_path)


def chat_engine(app: FastAPI, model: str) -> Any:
    if model not in app.state.models:
        raise Invalid(f"model {model!r} is not served here")
    with app.state.chat_lock:
        if model not in app.state.chat_engines:
            app.state.chat_engines[model] = app.state.engine_factory(app.state.models[model])
        return app.state.chat_engines[model]
