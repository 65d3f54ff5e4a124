"""Humans in the loop: the labeling web app (rankings, demonstrations) and the chat playground.

    create_app(db_url, secret_key=None, engine_factory=None)   # the FastAPI app
    init_db(db_url)                                            # alembic upgrade head
    wait_and_export(db_url, batch, out_path)                   # for `tiller label --labeler app`
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "create_app": "tiller.feedback.app",
    "init_db": "tiller.feedback.db",
    "wait_and_export": "tiller.feedback.services.export",
    "export_batch": "tiller.feedback.services.export",
    "export_prompts": "tiller.feedback.services.export",
}


def __getattr__(name: str) -> Any:  # imported on use: `import tiller.feedback` stays cheap
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)


__all__ = list(_EXPORTS)
