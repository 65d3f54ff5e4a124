"""Errors the service layer raises; the app turns each into its HTTP status (JSON for the API, a page else).

Also :class:`CleanValidationRoute`: FastAPI's 422 body echoes every bad input back (a 20 MB answer gave an
84 MB error, and a lone surrogate in it made the error itself fail with a 500, issue #15). Routes built with
it report the same errors with each input cut to a short, encodable preview.
"""

from __future__ import annotations

import math
from typing import Any

from tiller.data.formats import clean_text

MAX_ECHO = 200  # characters of a bad input shown back in a 422


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: str):
        detail = clean_text(detail)  # a detail quoting stored text must still encode as UTF-8
        super().__init__(detail)
        self.detail = detail


class Invalid(ServiceError):
    status_code = 422


class NotFound(ServiceError):
    status_code = 404


class Forbidden(ServiceError):
    status_code = 403


class Conflict(ServiceError):
    status_code = 409


class NotAuthenticated(ServiceError):
    status_code = 401


def preview(value: Any, limit: int = MAX_ECHO) -> Any:
    """A short, encodable stand-in for a bad input: long text cut, containers summarised."""
    if isinstance(value, str):
        value = clean_text(value)
        return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or Infinity: the 422 itself would fail
    if isinstance(value, bytes):
        return f"({len(value)} bytes)"
    if isinstance(value, dict):
        return f"(an object of {len(value)} fields)"
    if isinstance(value, list | tuple):
        return f"(a list of {len(value)} items)"
    return value


def clean_errors(errors: Any) -> list[dict[str, Any]]:
    """Pydantic errors with ``input`` previewed and every message, location and context made encodable."""
    out = []
    for err in errors:
        e = dict(err)
        if "input" in e:
            e["input"] = preview(e["input"])
        if "ctx" in e:
            e["ctx"] = {k: preview(v) if isinstance(v, str | float | int) else clean_text(str(v))
                        for k, v in e["ctx"].items()}
        for key in ("msg", "loc"):
            if key in e:
                e[key] = clean_text(e[key])
        out.append(e)
    return out
