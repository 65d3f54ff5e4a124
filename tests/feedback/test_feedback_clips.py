"""Clip-comparison batches (issue #16): import, the page and the API, idempotent answers, the export as
{id, a, b, mu}, and clip files served only through the viewer's own assignments. SQLite, and PostgreSQL
with TILLER_TEST_PG_URL (the ``db_url`` fixture)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from tiller.feedback.app import AppSettings, create_app
from tiller.feedback.cli import app as cli
from tiller.feedback.models import Assignment, Item, Label, User
from tiller.feedback.records import RecordError, parse_lines
from tiller.feedback.services.batches import import_batch
from tiller.feedback.services.export import batch_records
from tiller.feedback.services.users import create_user

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

PASSWORD = "correct horse"
TASK = "Which clip is closer to a backflip?"


def write_mp4(path: Path, shade: int, frames: int = 4) -> Path:
    """A real (tiny) H.264 MP4: ``frames`` 32x32 frames of one grey level."""
    w = imageio_ffmpeg.write_frames(str(path), (32, 32), fps=10, macro_block_size=1, ffmpeg_log_level="error")
    w.send(None)
    for _ in range(frames):
        w.send(np.full((32, 32, 3), shade, dtype=np.uint8))
    w.close()
    return path


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    d = tmp_path / "clips"
    d.mkdir()
    for i, name in enumerate(["walk-1", "walk-2", "flip-3"]):
        write_mp4(d / f"{name}.mp4", 40 + 80 * i)
    (tmp_path / "secret.mp4").write_bytes(b"outside the clips folder")
    return d


@pytest.fixture
def clip_app(db_url: str, clips: Path) -> Iterator[Any]:
    application = create_app(db_url, secret_key="test-secret", settings=AppSettings(clips_dir=clips))
    with application.state.sessions() as s:
        create_user(s, "root", "admin", PASSWORD)
        for name in ("ana", "ben"):
            create_user(s, name, "labeler", PASSWORD)
    yield application
    application.state.db_engine.dispose()


def pairs_text(*pairs: tuple[str, str], task: str = TASK) -> str:
    return "\n".join(json.dumps({"id": f"q{i}", "a": a, "b": b, "task": task}) for i, (a, b) in enumerate(pairs))


def import_clips(app: Any, clips: Path, name: str, pairs: list[tuple[str, str]], overlap: int = 1) -> None:
    with app.state.sessions() as s:
        import_batch(s, name, "clip", overlap, parse_lines(pairs_text(*pairs), "clip", clips_dir=clips))


def assignments(app: Any, user: str) -> list[int]:
    with app.state.sessions() as s:
        q = select(Assignment.id).join(User).join(Item).where(User.name == user).order_by(Item.position)
        return list(s.scalars(q))


def label_count(app: Any) -> int:
    with app.state.sessions() as s:
        return s.scalar(select(func.count()).select_from(Label))


# --- import --------------------------------------------------------------------------------------------


def test_import_names_the_line_and_field_of_a_bad_clip(clips: Path) -> None:
    def error(text: str) -> str:
        with pytest.raises(RecordError) as e:
            parse_lines(text, "clip", source="pairs.jsonl", clips_dir=clips)
        return str(e.value)

    good = json.dumps({"id": "q0", "a": "walk-1", "b": "walk-2", "task": TASK})
    assert error(good + "\n" + json.dumps({"id": "q1", "a": "walk-1", "b": "nope", "task": TASK})) == (
        "pairs.jsonl:2: field 'b': no clip 'nope' in the clips folder (expected nope.mp4)")
    for bad in ["../secret", "/etc/passwd", ".hidden", "a/b", "walk-1.mp4/.."]:
        msg = error(json.dumps({"id": "q0", "a": bad, "b": "walk-2", "task": TASK}))
        assert msg.startswith("pairs.jsonl:1: field 'a': ") and "is not a valid name" in msg, msg
    assert error(json.dumps({"id": "q0", "a": "walk-1", "b": "walk-1", "task": TASK})).startswith(
        "pairs.jsonl:1: field 'b': the same clip")
    assert error(json.dumps({"id": "q0", "a": "walk-1", "b": "walk-2"})).startswith("pairs.jsonl:1: field 'task'")
    assert error(json.dumps({"id": "q0", "a": 3, "b": "walk-2", "task": TASK})).startswith("pairs.jsonl:1: field 'a'")
    with pytest.raises(ValueError, match="clips folder"):
        parse_lines(good, "clip")  # no folder: nothing to check the ids against
    (item,) = parse_lines(good, "clip", clips_dir=clips)
    assert (item.id, item.responses, item.prompt) == ("q0", ["walk-1", "walk-2"], [{"role": "user", "content": TASK}])


def test_cli_import_and_export(tmp_path: Path, clips: Path) -> None:
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    assert runner.invoke(cli, ["create-user", "ana", "--password", PASSWORD, "--db", db]).exit_code == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(pairs_text(("walk-1", "walk-2"), ("walk-2", "gone")))
    r = runner.invoke(cli, ["import-batch", str(bad), "--name", "c1", "--kind", "clip", "--clips-dir", str(clips),
                            "--db", db])
    assert r.exit_code == 2 and r.output == f"error: {bad}:2: field 'b': no clip 'gone' in the clips folder (expected gone.mp4)\n"
    r = runner.invoke(cli, ["import-batch", str(bad), "--name", "c1", "--kind", "clip", "--db", db])
    assert r.exit_code == 2 and "--kind clip needs --clips-dir" in r.output
    good = tmp_path / "good.jsonl"
    good.write_text(pairs_text(("walk-1", "walk-2"), ("flip-3", "walk-1")))
    r = runner.invoke(cli, ["import-batch", str(good), "--name", "c1", "--kind", "clip", "--clips-dir", str(clips),
                            "--db", db])
    assert (r.exit_code, r.output) == (0, "imported 2 items into 'c1' (clip, overlap 1)\n")
    out = tmp_path / "c1.jsonl"
    r = runner.invoke(cli, ["export", "--batch", "c1", "--out", str(out), "--db", db])
    assert (r.exit_code, out.read_text()) == (0, "")  # nothing answered yet


def test_admin_upload_refuses_a_missing_clip_with_422(clip_app: Any, login: Any) -> None:
    root = login(clip_app, "root")
    form = {"name": "up1", "kind": "clip", "overlap": "1", "csrf_token": root.csrf}
    text = pairs_text(("walk-1", "walk-2"), ("walk-2", "missing-9"))
    r = root.post("/admin/batches", data=form, files={"file": ("pairs.jsonl", text.encode())})
    assert r.status_code == 422 and "pairs.jsonl:2: field &#39;b&#39;: no clip &#39;missing-9&#39;" in r.text
    assert assignments(clip_app, "ana") == [] and assignments(clip_app, "ben") == []
    text = pairs_text(("walk-1", "walk-2"))
    r = root.post("/admin/batches", data=form, files={"file": ("pairs.jsonl", text.encode())}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/batches/up1"
    assert "clip comparisons" in root.get("/admin/batches/up1").text


# --- answering -----------------------------------------------------------------------------------------


def test_the_task_is_text(clip_app: Any, clips: Path, login: Any) -> None:
    with clip_app.state.sessions() as s:
        text = pairs_text(("walk-1", "walk-2"), task="Which is <script>alert(1)</script> better?")
        import_batch(s, "x1", "clip", 1, parse_lines(text, "clip", clips_dir=clips), ["ana"])
    page = login(clip_app, "ana").get(f"/assignments/{assignments(clip_app, 'ana')[0]}").text
    assert "Which is &lt;script&gt;alert(1)&lt;/script&gt; better?" in page and "<script>alert" not in page


def test_api_answer_is_idempotent(clip_app: Any, clips: Path, token_client: Any) -> None:
    import_clips(clip_app, clips, "c1", [("walk-1", "walk-2"), ("flip-3", "walk-1")])
    ana = token_client(clip_app, "ana")
    a = ana.get("/api/assignments/next?batch=c1").json()
    assert a["kind"] == "clip" and a["prompt"] == [{"role": "user", "content": TASK}]
    assert a["responses"] is None  # no file names: the clips are fetched by assignment and side
    assert a["clips"] == [f"/api/assignments/{a['id']}/clips/0", f"/api/assignments/{a['id']}/clips/1"]
    url = f"/api/assignments/{a['id']}/label"
    key = {"Idempotency-Key": str(uuid.uuid4())}
    # a ranking is not an answer to a clip comparison, nor is an unknown choice
    assert ana.post(url, json={"ranking": [[0], [1]], "likert": [1, 2]}, headers=key).status_code == 422
    assert ana.post(url, json={"choice": "both"}, headers=key).status_code == 422
    r1 = ana.post(url, json={"choice": "right", "time_spent_s": 4.5}, headers=key)
    r2 = ana.post(url, json={"choice": "right", "time_spent_s": 4.5}, headers=key)  # a retry
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r1.json()["choice"] == "right" and r1.json()["ranking"] == [[1], [0]] and not r1.json()["replayed"]
    assert r2.json()["replayed"] and r2.json()["id"] == r1.json()["id"]
    assert label_count(clip_app) == 1
    again = ana.post(url, json={"choice": "left"}, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert again.status_code == 409 and label_count(clip_app) == 1  # one answer per assignment
    # a clip choice sent to a ranking item is refused
    from tiller.feedback.records import parse_lines as parse

    with clip_app.state.sessions() as s:
        rank = {"id": "r0", "prompt": "Hi?", "responses": ["a", "b"]}
        import_batch(s, "r1", "rank", 1, parse(json.dumps(rank), "rank"), ["ana"])
    rid = ana.get("/api/assignments/next?batch=r1").json()["id"]
    r = ana.post(f"/api/assignments/{rid}/label", json={"choice": "left"}, headers={"Idempotency-Key": "k" * 12})
    assert r.status_code == 422 and "ranking" in r.json()["detail"]


def test_page_form_and_export(clip_app: Any, clips: Path, login: Any, token_client: Any) -> None:
    pairs = [("walk-1", "walk-2"), ("flip-3", "walk-1"), ("walk-2", "flip-3"), ("walk-1", "flip-3")]
    import_clips(clip_app, clips, "c1", pairs, overlap=2)  # both labelers answer every pair
    ana = login(clip_app, "ana")
    first = assignments(clip_app, "ana")[0]
    page = ana.get(f"/assignments/{first}")
    assert page.status_code == 200 and f'<p class="task" id="task">{TASK}</p>' in page.text
    assert re.findall(r'<video src="([^"]+)"', page.text) == [f"/assignments/{first}/clips/0",
                                                              f"/assignments/{first}/clips/1"]
    assert all(f'value="{c}"' in page.text for c in ("left", "right", "equal", "cant_tell"))
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page.text).group(1)
    form = {"csrf_token": ana.csrf, "idempotency_key": key, "time_spent_s": "2.5", "choice": "left"}
    r = ana.post(f"/assignments/{first}", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/label/next?batch=c1"
    assert ana.post(f"/assignments/{first}", data=form, follow_redirects=False).status_code == 303  # double submit
    assert label_count(clip_app) == 1
    bad = {**form, "idempotency_key": str(uuid.uuid4()), "choice": "maybe"}
    assert ana.post(f"/assignments/{assignments(clip_app, 'ana')[1]}", data=bad).status_code == 422

    # the rest through the API: ana left, equal, can't tell; ben left, right, left, left
    answers = {"ana": ["left", "equal", "cant_tell"], "ben": ["left", "right", "left", "left"]}
    for name, choices in answers.items():
        client = token_client(clip_app, name)
        todo = assignments(clip_app, name)[-len(choices):]
        for aid, choice in zip(todo, choices, strict=True):
            r = client.post(f"/api/assignments/{aid}/label", json={"choice": choice},
                            headers={"Idempotency-Key": str(uuid.uuid4())})
            assert r.status_code == 201, r.text
    with clip_app.state.sessions() as s:
        records = list(batch_records(s, "c1"))
        choices = sorted(s.scalars(select(Label.choice)))
    assert len(choices) == 8 and choices.count("cant_tell") == 1  # recorded ...
    got = [(r["id"], r["labeler"], r["a"], r["b"], r["mu"]) for r in records]
    assert got == [  # ... but not exported; item order, then labeler; mu = P(a better)
        ("q0", "ana", "walk-1", "walk-2", 1.0), ("q0", "ben", "walk-1", "walk-2", 1.0),
        ("q1", "ana", "flip-3", "walk-1", 1.0), ("q1", "ben", "flip-3", "walk-1", 0.0),
        ("q2", "ana", "walk-2", "flip-3", 0.5), ("q2", "ben", "walk-2", "flip-3", 1.0),
        ("q3", "ben", "walk-1", "flip-3", 1.0),
    ]
    assert records[0]["task"] == TASK and records[0]["time_spent_s"] == 2.5
    # agreement over pairs both ordered: q0 agree, q1 disagree; q2 (a tie) and q3 (can't tell) compare nothing
    status = token_client(clip_app, "root").get("/api/batches/c1").json()
    assert (status["agreement"], status["compared_pairs"]) == (0.5, 2)
    export = login(clip_app, "root").get("/admin/batches/c1/export.jsonl")
    assert [json.loads(line)["mu"] for line in export.text.splitlines()] == [1.0, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0]


# --- the clip files --------------------------------------------------------------------------------------


def test_clips_only_through_ones_own_assignment(clip_app: Any, clips: Path, login: Any, token_client: Any,
                                                tmp_path: Path) -> None:
    import_clips(clip_app, clips, "c1", [("walk-1", "flip-3")])  # overlap 1: ana's (the least loaded first)
    (mine,) = assignments(clip_app, "ana")
    ana, ben, root = login(clip_app, "ana"), login(clip_app, "ben"), login(clip_app, "root")
    left, right = ana.get(f"/assignments/{mine}/clips/0"), ana.get(f"/assignments/{mine}/clips/1")
    assert left.status_code == 200 and left.headers["content-type"] == "video/mp4"
    assert left.content == (clips / "walk-1.mp4").read_bytes() and right.content == (clips / "flip-3.mp4").read_bytes()
    assert "private" in left.headers["cache-control"]
    part = ana.get(f"/assignments/{mine}/clips/0", headers={"Range": "bytes=0-7"})  # browsers seek with ranges
    assert part.status_code == 206 and part.content == (clips / "walk-1.mp4").read_bytes()[:8]
    api = token_client(clip_app, "ana").get(f"/api/assignments/{mine}/clips/1")
    assert api.status_code == 200 and api.content == right.content
    assert root.get(f"/assignments/{mine}/clips/1").content == right.content  # an admin may look

    # another labeler: as if the assignment did not exist, on the page route and in the API
    assert ben.get(f"/assignments/{mine}/clips/0").status_code == 404
    assert token_client(clip_app, "ben").get(f"/api/assignments/{mine}/clips/0").status_code == 404
    # not logged in
    from fastapi.testclient import TestClient

    assert TestClient(clip_app).get(f"/api/assignments/{mine}/clips/0").status_code == 401
    # only sides 0 and 1; nothing else in the path names a file
    for path in [f"/assignments/{mine}/clips/2", f"/assignments/{mine}/clips/-1", f"/assignments/{mine}/clips/walk-1"]:
        assert ana.get(path).status_code == 422, path
    for path in [f"/assignments/{mine}/clips/..%2F..%2Fsecret.mp4", f"/assignments/{mine}/clips/0/../../secret.mp4",
                 f"/assignments/{mine}/clips/0%2F..%2F..%2Fsecret.mp4", f"/api/assignments/{mine}/clips/..%2f..%2fsecret.mp4",
                 "/static/..%2F..%2F..%2Fsecret.mp4"]:
        r = ana.get(path)
        assert r.status_code in (404, 422) and b"outside the clips folder" not in r.content, path
    assert ana.get(f"/assignments/{mine + 1000}/clips/0").status_code == 404

    # a row written around the importer (an id that is a path) serves nothing
    with clip_app.state.sessions() as s:
        item = s.scalar(select(Item).where(Item.external_id == "q0"))
        item.responses = ["../secret", "walk-1"]
        s.commit()
    r = ana.get(f"/assignments/{mine}/clips/0")
    assert r.status_code == 404 and b"outside the clips folder" not in r.content
    # a clip deleted after import: 404, said plainly
    (clips / "walk-1.mp4").unlink()
    r = token_client(clip_app, "ana").get(f"/api/assignments/{mine}/clips/1")
    assert r.status_code == 404 and "missing" in r.json()["detail"]


def test_no_clips_from_other_batch_kinds_or_without_a_folder(db_url: str, clips: Path, token_client: Any) -> None:
    app = create_app(db_url, secret_key="test-secret")  # no clips_dir
    try:
        with app.state.sessions() as s:
            create_user(s, "ana", "labeler", PASSWORD)
            import_batch(s, "c1", "clip", 1, parse_lines(pairs_text(("walk-1", "walk-2")), "clip", clips_dir=clips))
            import_batch(s, "r1", "rank", 1, parse_lines(json.dumps({"id": "r", "prompt": "Hi", "responses": ["a", "b"]}),
                                                         "rank"))
        ana = token_client(app, "ana")
        clip_a, rank_a = assignments(app, "ana")[0], assignments(app, "ana")[0] + 1
        r = ana.get(f"/api/assignments/{clip_a}/clips/0")
        assert r.status_code == 404 and "--clips-dir" in r.json()["detail"]
        assert ana.get(f"/api/assignments/{rank_a}/clips/0").status_code == 404
    finally:
        app.state.db_engine.dispose()
