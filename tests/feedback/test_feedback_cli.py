"""`tiller app` commands: users, import (all-or-nothing, exit 2 on bad input), export."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from tiller.feedback.cli import app

runner = CliRunner()


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    r = runner.invoke(app, list(args), input=input)
    return r.exit_code, r.output


def test_users_import_export(tmp_path: Path, sample_lines: object) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    assert run("create-user", "boss", "--role", "admin", "--db", db, input="long enough\n")[0] == 0
    code, out = run("create-user", "ana", "--password", "long enough", "--token", "--db", db)
    assert code == 0 and out.splitlines()[1].startswith("token: ")
    assert run("create-user", "ana", "--password", "long enough", "--db", db) == (2, "error: user 'ana' already exists\n")
    assert run("create-user", "x", "--role", "god", "--password", "long enough", "--db", db)[0] == 2

    good = tmp_path / "s.jsonl"
    good.write_text("\n".join(sample_lines(3)) + "\n")  # type: ignore[operator]
    bad = tmp_path / "bad.jsonl"
    lines = sample_lines(3)  # type: ignore[operator]
    lines[1] = json.dumps({"id": "p1", "prompt": [], "responses": ["a", "b"]})
    bad.write_text("\n".join(lines))
    code, out = run("import-batch", str(bad), "--name", "r1", "--db", db)
    assert code == 2 and out.startswith(f"error: {bad}:2: field 'prompt'") and len(out.splitlines()) == 1
    engine = create_engine(db)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM items")).scalar() == 0
    assert run("import-batch", str(good), "--name", "r1", "--overlap", "2", "--db", db)[0] == 2  # 1 labeler
    code, out = run("import-batch", str(good), "--name", "r1", "--db", db)
    assert (code, out) == (0, "imported 3 items into 'r1' (rank, overlap 1)\n")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM assignments")).scalar() == 3
    engine.dispose()

    out_file = tmp_path / "out.jsonl"
    assert run("export", "--batch", "r1", "--out", str(out_file), "--db", db) == (0, f"wrote 0 records to {out_file}\n")
    assert run("export", "--batch", "nope", "--out", str(out_file), "--db", db) == (2, "error: no batch named 'nope'\n")
    assert run("export-prompts", "--out", str(tmp_path / "p.jsonl"), "--db", db)[0] == 0
    code, out = run("export", "--batch", "r1", "--out", str(out_file), "--db", "mysql+nodriver://x")
    assert code == 2 and out.startswith("error: --db")
