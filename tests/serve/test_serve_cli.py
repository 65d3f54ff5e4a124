"""``tiller serve`` as the lead mounts it: a bad model path is exit 2 with one line; a good one runs uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tiller.serve.cli import serve_cmd


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("serve")(serve_cmd)

    @app.command("other")
    def other() -> None:  # a second command keeps `serve` a subcommand, as in tiller.cli
        pass

    return app


def test_missing_model_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(_cli(), ["serve", "--model", str(tmp_path / "no-such-model")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot load model" in lines[0] and "no-such-model" in lines[0]


def test_serve_runs_uvicorn_with_the_app(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    result = CliRunner().invoke(
        _cli(),
        ["serve", "--model", str(tiny_model_dir), "--port", "8123", "--device", "cpu", "--model-name", "t"],
    )
    assert result.exit_code == 0, result.output
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    health = TestClient(seen["app"]).get("/health")
    assert health.json() == {"status": "ok", "model": "t"}
