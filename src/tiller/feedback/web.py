"""Templates and the one way to render a page (with the user and the CSRF token in the context)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from .deps import csrf_token

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescape is on for .html

_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_CODE = re.compile(r"`([^`\n]+)`")
_BOLD = re.compile(r"\*\*([^*\n]+)\*\*")


def safe_markdown(text: str) -> Markup:
    """Model text as HTML: everything escaped FIRST, then a tiny subset (code fences, `code`, **bold**)
    made from the escaped text. No tag or attribute of the input can survive the escape."""
    out = str(escape(text.replace("\x00", "")))
    blocks: list[str] = []

    def keep(m: re.Match) -> str:
        blocks.append(f"<pre><code>{m.group(1)}</code></pre>")
        return f"\x00{len(blocks) - 1}\x00"

    out = _FENCE.sub(keep, out)
    out = _CODE.sub(r"<code>\1</code>", out)
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    out = re.sub(r"\x00(\d+)\x00", lambda m: blocks[int(m.group(1))], out)
    return Markup(out)


templates.env.filters["md"] = safe_markdown


def render(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200) -> HTMLResponse:
    ctx = {"user": getattr(request.state, "user", None), "csrf_token": csrf_token(request), **(context or {})}
    return templates.TemplateResponse(request, name, ctx, status_code=status_code)
