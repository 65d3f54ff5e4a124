"""/admin/runs: every `tiller run` folder under the app's runs_dir, as `tiller status` reads it, with the batch a
waiting round needs from this app's labelers (TestClient, SQLite and, with TILLER_TEST_PG_URL, PostgreSQL)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import select

from helpers import fake_run
from tiller.config import to_dict
from tiller.feedback.models import User
from tiller.feedback.schemas import RankingCreate
from tiller.feedback.services.batches import list_assignments
from tiller.feedback.services.labels import submit_label
from tiller.labelers import LabelConfig
from tiller.pipeline import RunConfig
from tiller.status import write_status

SETUP = ["world/manifest.json", "base", "sft"]


def test_admin_runs_page_lists_runs_with_their_batch(app: Any, login: Any, import_rank_batch: Any, db_url: str,
                                                     tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    app.state.settings = replace(app.state.settings, runs_dir=runs)  # as `tiller app serve --runs-dir` sets it
    # 2 items, overlap 2, labelers ana ben chi: q0 -> ana, ben; q1 -> chi, ana. ana ranks her first.
    import_rank_batch(app, "alpha-samples-r1", n=2, k=3, overlap=2)
    with app.state.sessions() as s:
        ana = s.scalar(select(User).where(User.name == "ana"))
        first = list_assignments(s, ana, batch="alpha-samples-r1")[0]
        submit_label(s, ana, first.id, RankingCreate(ranking=[[0], [1], [2]], likert=[7, 4, 1]), key=uuid.uuid4().hex)
    waiting = to_dict(RunConfig(rounds=1, arms=[], label=LabelConfig(labeler="app", db=db_url, overlap=2)))
    fake_run(runs / "alpha", waiting, [*SETUP, "data/samples-r1.jsonl"])
    write_status(runs / "alpha", "label-r1", state="waiting", round=1, batch="alpha-samples-r1", db=db_url)
    finished = to_dict(RunConfig(rounds=1, arms=[]))
    fake_run(runs / "beta", finished, [*SETUP, "data/samples-r1.jsonl", "data/rankings-r1.jsonl", "rm-r1", "policy-r1",
                                       "report/results.json", "report/report.html"])
    fake_run(runs / "gamma<b>x", finished, [])
    (runs / "scratch").mkdir()  # not a run folder: no run-config.json, no status.json

    admin = login(app, "root")
    assert 'href="/admin/runs"' in admin.get("/admin/").text
    page = admin.get("/admin/runs")
    assert page.status_code == 200
    text = page.text
    assert text.index("alpha") < text.index("beta") < text.index("gamma") and "scratch" not in text
    assert "gamma&lt;b&gt;x" in text and "<b>x" not in text  # names are text, never markup
    alpha = text[text.index("<h2>alpha"):text.index("<h2>beta")]
    assert "label-r1 (round 1 of 1)" in alpha and '<span class="pill">waiting</span>' in alpha
    assert "1 of 4 assignments done, 4 needed" in alpha
    for row in ("<td>ana</td><td>1</td><td>1</td><td>0</td><td>0</td>", "<td>ben</td><td>0</td><td>1</td><td>0</td><td>0</td>",
                "<td>chi</td><td>0</td><td>1</td><td>0</td><td>0</td>"):
        assert row in alpha
    assert 'href="/admin/batches/alpha-samples-r1"' in alpha
    assert "waiting for 3 more rankings in batch alpha-samples-r1 (tiller app); then rm-r1" in alpha
    beta = text[text.index("<h2>beta"):text.index("<h2>gamma")]
    assert '<span class="pill">done</span>' in beta and f"finished: the report is {runs / 'beta'}" in beta

    assert login(app, "ana").get("/admin/runs").status_code == 403  # admins only
    app.state.settings = replace(app.state.settings, runs_dir=tmp_path / "missing")
    empty = admin.get("/admin/runs")
    assert empty.status_code == 200 and "No run folders in" in empty.text and "<h2>" not in empty.text


def test_serve_takes_a_runs_dir() -> None:
    from typer.testing import CliRunner

    from tiller.feedback.app import AppSettings
    from tiller.feedback.cli import app

    assert AppSettings().runs_dir == Path("runs")
    shown = CliRunner().invoke(app, ["serve", "--help"])
    assert shown.exit_code == 0 and "--runs-dir" in shown.output
