"""The app through HTTP (TestClient), on SQLite and, with TILLER_TEST_PG_URL, on PostgreSQL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tiller.feedback.models import Assignment, Batch, Item, Label, User
from tiller.feedback.services.export import wait_and_export

RANK = {"ranking": [[2], [0, 3], [1]], "likert": [5, 2, 7, 5], "flags": [[], ["hallucination"], [], []]}


def assignments_of(app: Any, name: str) -> list[Assignment]:
    with app.state.sessions() as s:
        q = select(Assignment).join(User).join(Item).where(User.name == name).order_by(Item.position)
        return list(s.scalars(q))


def count(app: Any, model: type) -> int:
    with app.state.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


# --- accounts, sessions, CSRF ------------------------------------------------------------------------


def test_login_wrong_password_and_rate_limit(app: Any, login: Any) -> None:
    from fastapi.testclient import TestClient

    c = TestClient(app)
    token = c.get("/login").text.split('name="csrf-token" content="')[1].split('"')[0]
    form = {"name": "ana", "password": "wrong", "csrf_token": token}
    assert c.post("/login", data=form).status_code == 401
    for _ in range(4):
        c.post("/login", data=form)
    # the 6th attempt in a minute is refused even with the right password
    r = c.post("/login", data={**form, "password": "correct horse"}, follow_redirects=False)
    assert r.status_code == 429 and "Too many login attempts" in r.text
    assert c.get("/", follow_redirects=False).status_code == 303  # not logged in
    login(app, "ben")  # another user from the same address is not limited


def test_post_without_csrf_token_is_refused(app: Any, login: Any, import_rank_batch: Any) -> None:
    from fastapi.testclient import TestClient

    c = TestClient(app)
    c.get("/login")
    assert c.post("/login", data={"name": "ana", "password": "correct horse"}).status_code == 403
    import_rank_batch(app)
    ana = login(app, "ana")
    a = assignments_of(app, "ana")[0]
    form = {"ranking": "1 > 2 > 3 > 4", **{f"likert_{i}": "4" for i in range(4)}, "idempotency_key": "k" * 16}
    assert ana.post(f"/assignments/{a.id}", data=form).status_code == 403
    assert ana.post(f"/assignments/{a.id}", data={**form, "csrf_token": "forged"}).status_code == 403
    # the JSON API with a cookie needs the header; a bearer token needs none
    body = {**RANK, "idempotency_key": str(uuid.uuid4())}
    assert ana.post(f"/api/assignments/{a.id}/label", json=body).status_code == 403
    assert count(app, Label) == 0
    r = ana.post(f"/api/assignments/{a.id}/label", json=body, headers={"X-CSRF-Token": ana.csrf})
    assert r.status_code == 201


def test_api_requires_auth(app: Any, token_client: Any) -> None:
    from fastapi.testclient import TestClient

    assert TestClient(app).get("/api/me").status_code == 401
    bad = TestClient(app, headers={"Authorization": "Bearer nope"})
    assert bad.get("/api/me").status_code == 401
    assert token_client(app, "ana").get("/api/me").json()["name"] == "ana"


# --- batches ---------------------------------------------------------------------------------------


def test_import_assigns_overlap_distinct_least_loaded(app: Any, import_rank_batch: Any) -> None:
    import_rank_batch(app, n=4, overlap=2)
    with app.state.sessions() as s:
        rows = s.execute(select(Item.external_id, User.name).join(Assignment.item).join(Assignment.user)
                         .order_by(Item.position, User.name)).all()
    by_item: dict[str, list[str]] = {}
    for item, name in rows:
        by_item.setdefault(item, []).append(name)
    # equal loads go round-robin: p0 ana,ben; p1 chi,ana; p2 ben,chi; p3 ana,ben
    assert by_item == {"p0": ["ana", "ben"], "p1": ["ana", "chi"], "p2": ["ben", "chi"], "p3": ["ana", "ben"]}


def test_malformed_upload_imports_nothing(app: Any, login: Any, sample_lines: Any) -> None:
    admin = login(app, "root")
    lines = sample_lines(5)
    lines[2] = json.dumps({"id": "p2", "prompt": "q", "responses": ["only one"]})
    r = admin.post("/admin/batches", data={"name": "b", "kind": "rank", "overlap": "1", "csrf_token": admin.csrf},
                   files={"file": ("samples.jsonl", "\n".join(lines))})
    assert r.status_code == 422
    assert "samples.jsonl:3: field &#39;responses&#39;" in r.text and "Nothing imported" in r.text
    assert (count(app, Batch), count(app, Item), count(app, Assignment)) == (0, 0, 0)
    # a good file works, and the same name again is refused without touching the first
    r = admin.post("/admin/batches", data={"name": "b", "kind": "rank", "overlap": "1", "csrf_token": admin.csrf},
                   files={"file": ("samples.jsonl", "\n".join(sample_lines(5)))}, follow_redirects=False)
    assert r.status_code == 303
    r = admin.post("/admin/batches", data={"name": "b", "kind": "rank", "overlap": "1", "csrf_token": admin.csrf},
                   files={"file": ("samples.jsonl", "\n".join(sample_lines(2)))})
    assert r.status_code == 409 and count(app, Item) == 5


# --- permissions -----------------------------------------------------------------------------------


def test_labelers_cannot_touch_each_others_assignments(
    app: Any, login: Any, token_client: Any, import_rank_batch: Any
) -> None:
    import_rank_batch(app)
    theirs = assignments_of(app, "ana")[0].id
    ben, ben_api = login(app, "ben"), token_client(app, "ben")
    assert ben.get(f"/assignments/{theirs}").status_code == 404
    assert ben_api.get(f"/api/assignments/{theirs}").status_code == 404
    body = {**RANK, "idempotency_key": str(uuid.uuid4())}
    assert ben_api.post(f"/api/assignments/{theirs}/label", json=body).status_code == 404
    assert ben_api.post(f"/api/assignments/{theirs}/skip").status_code == 404
    form = {"ranking": "1 > 2 > 3 > 4", **{f"likert_{i}": "4" for i in range(4)}, "csrf_token": ben.csrf,
            "idempotency_key": "k" * 16}
    assert ben.post(f"/assignments/{theirs}", data=form).status_code == 404
    assert {a["labeler"] for a in ben_api.get("/api/assignments").json()} == {"ben"}
    assert ben.get("/admin/").status_code == 403 and ben_api.get("/api/batches/b1").status_code == 403
    # an admin sees everything but labels nobody else's work
    root = token_client(app, "root")
    assert root.get(f"/api/assignments/{theirs}").json()["labeler"] == "ana"
    assert root.post(f"/api/assignments/{theirs}/label", json=body).status_code == 403
    assert len(root.get("/api/assignments").json()) == 8
    assert count(app, Label) == 0


# --- labels ----------------------------------------------------------------------------------------


def test_form_double_submit_stores_one_label(app: Any, login: Any, import_rank_batch: Any) -> None:
    import_rank_batch(app)
    ana = login(app, "ana")
    a = assignments_of(app, "ana")[0]
    page = ana.get(f"/assignments/{a.id}").text
    key = page.split('name="idempotency_key" value="')[1].split('"')[0]
    form = {"ranking": "3 > 1 = 4 > 2", "likert_0": "5", "likert_1": "2", "likert_2": "7", "likert_3": "5",
            "flags_1": "hallucination", "time_spent_s": "12.5", "idempotency_key": key, "csrf_token": ana.csrf}
    for _ in range(2):  # a double click
        r = ana.post(f"/assignments/{a.id}", data=form, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/label/next?batch=b1"
    with app.state.sessions() as s:
        labels = list(s.scalars(select(Label)))
    assert len(labels) == 1
    assert (labels[0].ranking, labels[0].likert, labels[0].flags) == (RANK["ranking"], RANK["likert"], RANK["flags"])
    assert labels[0].time_spent_s == 12.5
    # the next item follows
    nxt = ana.get("/label/next?batch=b1", follow_redirects=False).headers["location"]
    assert nxt == f"/assignments/{assignments_of(app, 'ana')[1].id}"


def test_api_idempotency_key_replays_and_conflicts(app: Any, token_client: Any, import_rank_batch: Any) -> None:
    import_rank_batch(app)
    ana = token_client(app, "ana")
    first, second = (a.id for a in assignments_of(app, "ana")[:2])
    key = str(uuid.uuid4())
    r1 = ana.post(f"/api/assignments/{first}/label", json=RANK, headers={"Idempotency-Key": key})
    r2 = ana.post(f"/api/assignments/{first}/label", json=RANK, headers={"Idempotency-Key": key})
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r2.json()["replayed"] and r1.json()["id"] == r2.json()["id"]
    other = ana.post(f"/api/assignments/{first}/label", json=RANK, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert other.status_code == 409
    assert ana.post(f"/api/assignments/{second}/label", json=RANK, headers={"Idempotency-Key": key}).status_code == 409
    assert ana.post(f"/api/assignments/{second}/label", json=RANK).status_code == 422  # no key
    assert count(app, Label) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"ranking": [[0], [1], [2]], "likert": [4, 4, 4, 4]},  # answer 4 missing
        {"ranking": [[0], [1], [2], [3], [3]], "likert": [4, 4, 4, 4]},  # answer 4 twice
        {"ranking": [[0], [1, 2, 3]], "likert": [4, 4, 8, 4]},  # likert out of range
        {"ranking": [[0], [1, 2, 3]], "likert": [4, 4, 4, 4], "flags": [["rude"], [], [], []]},
        {"response": "a demonstration for a ranking item"},
    ],
)
def test_invalid_labels_are_refused(app: Any, token_client: Any, import_rank_batch: Any, bad: dict) -> None:
    import_rank_batch(app)
    a = assignments_of(app, "ana")[0]
    r = token_client(app, "ana").post(f"/api/assignments/{a.id}/label", json=bad,
                                      headers={"Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 422
    assert count(app, Label) == 0 and assignments_of(app, "ana")[0].status == "pending"


def test_export_agreement_and_wait(app: Any, token_client: Any, import_rank_batch: Any, tmp_path: Path,
                                   db_url: str) -> None:
    import_rank_batch(app, n=2, overlap=2)  # p0: ana, ben; p1: chi, ana
    ana, ben, chi = (token_client(app, n) for n in ("ana", "ben", "chi"))
    a_p0, a_p1 = (a.id for a in assignments_of(app, "ana"))
    (b_p0,) = (a.id for a in assignments_of(app, "ben"))
    (c_p1,) = (a.id for a in assignments_of(app, "chi"))

    def label(client: Any, aid: int, ranking: list) -> None:
        body = {"ranking": ranking, "likert": [4, 4, 4, 4], "idempotency_key": str(uuid.uuid4())}
        assert client.post(f"/api/assignments/{aid}/label", json=body).status_code == 201

    label(ana, a_p0, [[0], [1], [2], [3]])
    label(ben, b_p0, [[0], [2], [1], [3]])  # one swap: 5 of 6 pairs agree
    out = tmp_path / "out.jsonl"
    with pytest.raises(TimeoutError, match="2 pending"):
        wait_and_export(db_url, "b1", out, poll_s=0.05, timeout_s=0.2)
    label(ana, a_p1, [[3], [0, 1, 2]])
    assert chi.post(f"/api/assignments/{c_p1}/skip").json()["status"] == "skipped"
    assert wait_and_export(db_url, "b1", out, poll_s=0.05, timeout_s=5) == 3

    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["id"], r["labeler"]) for r in records] == [("p0", "ana"), ("p0", "ben"), ("p1", "ana")]
    assert records[2] == {
        "prompt": [{"role": "user", "content": "Question 1?"}],
        "responses": ["answer 1.0", "answer 1.1", "answer 1.2", "answer 1.3"],
        "ranking": [[3], [0, 1, 2]], "labeler": "ana", "likert": [4, 4, 4, 4], "flags": [[], [], [], []], "id": "p1",
        "policy": "sft-1", "time_spent_s": 0.0,  # the import's metadata and the labeler's time (issue #15)
    }
    download = token_client(app, "root").get("/api/batches/b1/export.jsonl")
    assert download.text == out.read_text()
    status = token_client(app, "root").get("/api/batches/b1").json()
    assert status["assignments"] == {"done": 3, "skipped": 1}
    assert status["agreement"] == pytest.approx(5 / 6) and status["compared_pairs"] == 6
    assert status["tau_b"] == pytest.approx(4 / 6)
    formats = pytest.importorskip("tiller.data.formats")  # what `tiller rm` reads
    assert [formats.Ranking.from_json(r).ranking for r in records][2] == [[3], [0, 1, 2]]


def test_demonstration_batch(app: Any, login: Any, tmp_path: Path, db_url: str) -> None:
    from tiller.feedback.records import parse_lines
    from tiller.feedback.services.batches import import_batch
    from tiller.feedback.services.export import export_batch

    with app.state.sessions() as s:
        import_batch(s, "demos", "demo", 1, parse_lines('{"id": "d1", "prompt": "Write a haiku."}', "demo"))
    (a,) = [a for n in ("ana", "ben", "chi") for a in assignments_of(app, n)]
    with app.state.sessions() as s:
        who = s.get(User, a.user_id).name
    c = login(app, who)
    assert "Write the answer you would want" in c.get(f"/assignments/{a.id}").text
    # a browser sends a textarea's line breaks as CRLF; the stored answer has plain newlines
    form = {"response": "Old pond,\r\na frog.", "idempotency_key": str(uuid.uuid4()), "csrf_token": c.csrf}
    assert c.post(f"/assignments/{a.id}", data=form, follow_redirects=False).status_code == 303
    assert export_batch(db_url, "demos", tmp_path / "d.jsonl") == 1
    rec = json.loads((tmp_path / "d.jsonl").read_text())
    assert rec == {"prompt": [{"role": "user", "content": "Write a haiku."}], "response": "Old pond,\na frog.",
                   "labeler": who, "id": "d1", "time_spent_s": 0.0}
    formats = pytest.importorskip("tiller.data.formats")  # what `tiller sft` reads
    assert formats.Demonstration.from_json(rec).response == "Old pond,\na frog."


def test_model_text_is_escaped_in_the_page(app: Any, login: Any) -> None:
    from tiller.feedback.records import parse_lines
    from tiller.feedback.services.batches import import_batch

    evil = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1"> **bold**'
    rec = {"id": "x", "prompt": "hi", "responses": [evil, "fine"]}
    with app.state.sessions() as s:
        import_batch(s, "x", "rank", 3, parse_lines(json.dumps(rec), "rank"))
    c = login(app, "ana")
    page = c.get(f"/assignments/{assignments_of(app, 'ana')[0].id}")
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;&lt;img src=x onerror=&#34;window.__pwned=1&#34;&gt;" \
        in page.text
    assert "<script>window" not in page.text and "<strong>bold</strong>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
