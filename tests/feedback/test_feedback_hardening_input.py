"""Issue #15, input hardening: bad text, edge numbers, failed playground turns, batch names and exports,
through the real app on SQLite and (with TILLER_TEST_PG_URL) PostgreSQL: the same input, the same answer."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tiller.feedback.app import create_app
from tiller.feedback.models import (
    Assignment,
    Batch,
    ChatComparison,
    ChatMessage,
    ChatPrompt,
    Item,
    Label,
    User,
)
from tiller.feedback.records import ItemIn
from tiller.feedback.services.batches import import_batch
from tiller.feedback.services.users import create_user

RANK = {"ranking": [[1], [0]], "likert": [5, 2]}


def count(app: Any, model: type) -> int:
    with app.state.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def assignments_of(app: Any, name: str) -> list[Assignment]:
    with app.state.sessions() as s:
        q = select(Assignment).join(User).join(Item).where(User.name == name).order_by(Item.position)
        return list(s.scalars(q))


def upload(admin: Any, lines: list[Any], name: str = "b", kind: str = "rank", **form: str) -> Any:
    """The admin import form; each line a record (dumped as JSON: escapes such as \\ud800 stay escapes)."""
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
    data = {"name": name, "kind": kind, "overlap": "1", "csrf_token": admin.csrf, **form}
    return admin.post("/admin/batches", data=data, files={"file": ("s.jsonl", text)}, follow_redirects=False)


def demo_batch(app: Any, labeler: str = "ana") -> int:
    with app.state.sessions() as s:
        import_batch(s, "d", "demo", 1, [ItemIn(id="d1", prompt=[{"role": "user", "content": "Write."}])], [labeler])
    return assignments_of(app, labeler)[0].id


def rank_batch(app: Any, labeler: str = "ana") -> int:
    item = ItemIn(id="r1", prompt=[{"role": "user", "content": "Q?"}], responses=["a", "b"])
    with app.state.sessions() as s:
        import_batch(s, "r", "rank", 1, [item], [labeler])
    return assignments_of(app, labeler)[0].id


def raw_json(fields: dict, **raw: str) -> str:
    """A JSON body with the ``raw`` values written verbatim: what ``json.dumps`` would not write (the escape
    ``\\ud800`` of a lone surrogate, ``NaN``), as any other client may send it."""
    body = json.dumps({**fields, **{k: f"@{k}@" for k in raw}})
    for k, v in raw.items():
        body = body.replace(f'"@{k}@"', v)
    return body


def label_body(**extra: Any) -> dict:
    return {"idempotency_key": str(uuid.uuid4()), **extra}


# --- 1. a 422 never echoes a large input ---------------------------------------------------------------


def test_validation_error_does_not_echo_a_large_input(app: Any, token_client: Any) -> None:
    aid = demo_batch(app)
    huge = "x" * 500_000  # 5x the 100k limit, under the request size limit
    r = token_client(app, "ana").post(f"/api/assignments/{aid}/label", json=label_body(response=huge))
    assert r.status_code == 422
    assert len(r.content) < 10_000, len(r.content)
    assert "response" in r.text and count(app, Label) == 0


# --- 2. text no database or page can hold -------------------------------------------------------------


@pytest.mark.parametrize("bad", ["p\ud800", "p\x00"], ids=["surrogate", "nul"])
@pytest.mark.parametrize("where", ["prompt", "answer", "id", "message"])
def test_import_refuses_bad_text_naming_line_and_field(app: Any, login: Any, bad: str, where: str) -> None:
    good = {"id": "p0", "prompt": "Q?", "responses": ["a", "b"]}
    rec = {
        "prompt": {**good, "id": "p1", "prompt": bad},
        "answer": {**good, "id": "p1", "responses": ["a", bad]},
        "id": {**good, "id": bad},
        "message": {**good, "id": "p1", "prompt": [{"role": "system", "content": bad}, {"role": "user", "content": "Q"}]},
    }[where]
    field = {"prompt": "prompt", "answer": "responses[1]", "id": "id", "message": "prompt[0].content"}[where]
    admin = login(app, "root")
    r = upload(admin, [good, rec])
    assert r.status_code == 422, r.text
    assert f"s.jsonl:2: field &#39;{field}&#39;" in r.text and "Nothing imported" in r.text
    assert (count(app, Batch), count(app, Item)) == (0, 0)
    for client in (admin, login(app, "ana")):  # every page still answers
        assert client.get("/").status_code == 200
        assert client.get("/api/assignments").status_code == 200


def test_pages_survive_a_bad_record_already_stored(app: Any, login: Any, token_client: Any, db_url: str) -> None:
    # JSON columns hold it (written as the escape \ud800); a text column could not (neither database
    # encodes it), so the id is plain.
    bad = ItemIn(id="p1", prompt=[{"role": "user", "content": "p\ud800"}], responses=["a\ud800", "b"])
    with app.state.sessions() as s:  # as an import before the text rule did
        import_batch(s, "b", "rank", 1, [bad], ["ana"])
    aid = assignments_of(app, "ana")[0].id
    ana, root = login(app, "ana"), login(app, "root")
    for r in (ana.get(f"/assignments/{aid}"), ana.get("/label/next?batch=b"), root.get(f"/assignments/{aid}")):
        assert r.status_code == 200 and "p\ufffd" in r.text and "a\ufffd" in r.text
    assert ana.get("/").status_code == root.get("/admin/batches/b").status_code == 200
    api = token_client(app, "ana")
    (listed,) = api.get("/api/assignments").json()
    assert listed["prompt"][0]["content"] == "p\ufffd"
    assert api.get(f"/api/assignments/{aid}").json()["responses"] == ["a\ufffd", "b"]
    assert api.post(f"/api/assignments/{aid}/label", json=label_body(**RANK)).status_code == 201
    export = root.get("/admin/batches/b/export.jsonl")
    assert export.status_code == 200 and json.loads(export.text)["responses"] == ["a\ufffd", "b"]


@pytest.mark.parametrize("bad", ["p\\ud800", "p\\u0000"], ids=["surrogate", "nul"])
def test_label_api_refuses_bad_text_with_a_clear_422(app: Any, token_client: Any, bad: str) -> None:
    aid = demo_batch(app)
    body = raw_json(label_body(), response=f'"{bad}"')
    r = token_client(app, "ana").post(f"/api/assignments/{aid}/label", content=body,
                                      headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert any(err["loc"][-1] == "response" for err in r.json()["detail"]) and count(app, Label) == 0


def test_form_refuses_a_nul_in_a_demonstration(app: Any, login: Any) -> None:
    aid = demo_batch(app)
    ana = login(app, "ana")
    form = {"response": "Old\x00pond", "idempotency_key": str(uuid.uuid4()), "csrf_token": ana.csrf}
    r = ana.post(f"/assignments/{aid}", data=form)
    assert r.status_code == 422 and "response" in r.text and "NUL" in r.text
    assert count(app, Label) == 0


# --- 6. numbers at the door ---------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["limit=-1", "limit=0", "limit=1001", "limit=99999999999999999999", "status=bogus"])
def test_assignment_list_refuses_out_of_range_queries(app: Any, token_client: Any, query: str) -> None:
    rank_batch(app)
    assert token_client(app, "ana").get(f"/api/assignments?{query}").status_code == 422


def test_batch_filter_with_a_nul_is_an_empty_answer_on_both_databases(app: Any, token_client: Any) -> None:
    rank_batch(app)
    api = token_client(app, "root")
    assert api.get("/api/assignments?batch=r%00").json() == []
    assert api.get("/api/batches/r%00").status_code == 404


@pytest.mark.parametrize("big", [2**31, 2**63, 2**64, 0, -1])
def test_ids_outside_the_database_range_are_422(app: Any, login: Any, token_client: Any, big: int) -> None:
    api, ana = token_client(app, "ana"), login(app, "ana")
    h = {"X-CSRF-Token": ana.csrf}
    for r in (
        api.get(f"/api/assignments/{big}"),
        api.post(f"/api/assignments/{big}/label", json=label_body(**RANK)),
        api.post(f"/api/assignments/{big}/skip"),
        ana.get(f"/assignments/{big}"),
        ana.post(f"/assignments/{big}/skip", data={"csrf_token": ana.csrf}),
        api.get(f"/api/chat/conversations/{big}"),
        ana.post(f"/api/chat/comparisons/{big}/choose", json={"choice": 0}, headers=h),
        ana.post(f"/api/chat/messages/{big}/rating", json={"value": 1}, headers=h),
    ):
        assert r.status_code == 422, (r.request.url, r.status_code, r.text)


@pytest.mark.parametrize("seconds", ["NaN", "Infinity", "-Infinity", "-1", "1e300"])
def test_time_spent_must_be_finite_and_in_range(app: Any, token_client: Any, seconds: str) -> None:
    aid = rank_batch(app)
    body = raw_json(label_body(**RANK), time_spent_s=seconds)
    r = token_client(app, "ana").post(f"/api/assignments/{aid}/label", content=body,
                                      headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-1] == "time_spent_s" and count(app, Label) == 0


def test_form_time_is_capped_and_nan_refused(app: Any, login: Any) -> None:
    aid = rank_batch(app)
    ana = login(app, "ana")
    form = {"ranking": "2 > 1", "likert_0": "5", "likert_1": "2", "csrf_token": ana.csrf}
    r = ana.post(f"/assignments/{aid}", data={**form, "time_spent_s": "nan", "idempotency_key": str(uuid.uuid4())})
    assert r.status_code == 422 and "time_spent_s" in r.text
    r = ana.post(f"/assignments/{aid}", data={**form, "time_spent_s": "1e12", "idempotency_key": str(uuid.uuid4())},
                 follow_redirects=False)
    assert r.status_code == 303
    with app.state.sessions() as s:
        assert s.scalar(select(Label.time_spent_s)) == 24 * 3600.0  # a tab left open: the cap, not an error


def test_import_form_with_an_unknown_kind_is_422(app: Any, login: Any, sample_lines: Any) -> None:
    r = upload(login(app, "root"), sample_lines(2), kind="bogus")
    assert r.status_code == 422 and "task must be one of rank, demo" in r.text
    assert count(app, Batch) == 0


# --- 7. the playground stores nothing for a turn that failed ---------------------------------------------


@pytest.fixture
def chat_app(db_url: str, tiny_model_dir: Path) -> Any:
    pytest.importorskip("tiller.serve.engine")
    from tiller.serve.engine import ChatEngine

    application = create_app(db_url, secret_key="s", models={"tiny": str(tiny_model_dir)},
                             engine_factory=lambda path: ChatEngine(path, device="cpu"))
    with application.state.sessions() as s:
        create_user(s, "ana", "labeler", "correct horse")
        create_user(s, "root", "admin", "correct horse")
    yield application
    application.state.db_engine.dispose()


def chat_counts(app: Any) -> tuple[int, int, int]:
    return count(app, ChatMessage), count(app, ChatPrompt), count(app, ChatComparison)


def test_too_long_turns_store_nothing_and_the_chat_goes_on(chat_app: Any, login: Any) -> None:
    ana = login(chat_app, "ana")
    h = {"X-CSRF-Token": ana.csrf}
    cid = ana.post("/api/chat/conversations", json={"model": "tiny"}, headers=h).json()["id"]
    too_long = {"content": "xq " * 1000, "max_new_tokens": 4}  # far past the tiny model's 512 positions
    for path in ("compare", "turn"):
        r = ana.post(f"/api/chat/conversations/{cid}/{path}", json=too_long, headers=h)
        assert r.status_code == 422, r.text
        assert "context window is 512" in r.json()["detail"] and "Nothing was stored" in r.json()["detail"]
        assert chat_counts(chat_app) == (0, 0, 0)
    r = ana.post(f"/api/chat/conversations/{cid}/turn", json={"content": "Hello", "max_new_tokens": 4, "seed": 1},
                 headers=h)
    assert r.status_code == 200 and "event: done" in r.text
    messages = ana.get(f"/api/chat/conversations/{cid}").json()["messages"]
    assert [(m["role"], m["content"]) for m in messages][0] == ("user", "Hello") and len(messages) == 2
    comp = ana.post(f"/api/chat/conversations/{cid}/compare", json={"content": "And?", "max_new_tokens": 4},
                    headers=h)
    assert comp.status_code == 201 and chat_counts(chat_app) == (3, 2, 1)


@pytest.mark.parametrize("bad", ["p\\ud800", "p\\u0000"], ids=["surrogate", "nul"])
def test_playground_refuses_bad_text(chat_app: Any, login: Any, bad: str) -> None:
    ana = login(chat_app, "ana")
    h = {"X-CSRF-Token": ana.csrf, "Content-Type": "application/json"}
    cid = ana.post("/api/chat/conversations", json={"model": "tiny"}, headers=h).json()["id"]
    for path in ("turn", "compare"):
        r = ana.post(f"/api/chat/conversations/{cid}/{path}", content=raw_json({}, content=f'"{bad}"'), headers=h)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "content"
    assert chat_counts(chat_app) == (0, 0, 0)


# --- 8. batch names and empty text -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["round1/a", "..", ".hidden", "a b", "x" * 129, "%2F"])
def test_batch_names_that_cannot_be_a_url_segment_are_refused(app: Any, login: Any, sample_lines: Any,
                                                              name: str) -> None:
    r = upload(login(app, "root"), sample_lines(2), name=name)
    assert r.status_code == 422 and "batch name" in r.text
    assert count(app, Batch) == 0


def test_a_valid_batch_name_reaches_its_pages_and_export(app: Any, login: Any, sample_lines: Any) -> None:
    root = login(app, "root")
    assert upload(root, sample_lines(2), name="round1.a-b_c").status_code == 303
    assert root.get("/admin/batches/round1.a-b_c").status_code == 200
    assert root.get("/admin/batches/round1.a-b_c/export.jsonl").status_code == 200


@pytest.mark.parametrize(("rec", "field"), [
    ({"id": "p1", "prompt": "  ", "responses": ["a", "b"]}, "prompt"),
    ({"id": "p1", "prompt": [{"role": "user", "content": ""}], "responses": ["a", "b"]}, "prompt"),
    ({"id": "p1", "prompt": "Q?", "responses": ["a", " "]}, "responses[1]"),
])
def test_empty_prompts_and_answers_are_refused(app: Any, login: Any, rec: dict, field: str) -> None:
    r = upload(login(app, "root"), [{"id": "p0", "prompt": "Q?", "responses": ["a", "b"]}, rec])
    assert r.status_code == 422 and f"s.jsonl:2: field &#39;{field}&#39;" in r.text
    assert count(app, Batch) == 0


def test_empty_answers_are_accepted_when_asked(app: Any, login: Any) -> None:
    r = upload(login(app, "root"), [{"id": "p0", "prompt": "Q?", "responses": ["a", ""]}], allow_empty="1")
    assert r.status_code == 303 and count(app, Item) == 1


# --- 10. exports ----------------------------------------------------------------------------------------


def test_batch_export_keeps_import_metadata_and_time(app: Any, login: Any, token_client: Any) -> None:
    from tiller.data.formats import Demonstration, Ranking

    root = login(app, "root")
    meta = {"policy": "sft-1", "user_id": "u7", "family": "brainstorm"}
    assert upload(root, [{"id": "p0", "prompt": "Q?", "responses": ["a", "b"], **meta}], labelers="ana",
                  name="r").status_code == 303
    assert upload(root, [{"id": "d0", "prompt": "Write.", "family": "poem"}], kind="demo", labelers="ana",
                  name="d").status_code == 303
    api = token_client(app, "ana")
    rank_id, demo_id = (a.id for a in sorted(assignments_of(app, "ana"), key=lambda a: a.id))
    assert api.post(f"/api/assignments/{rank_id}/label", json=label_body(**RANK, time_spent_s=12.5)).status_code == 201
    r = api.post(f"/api/assignments/{demo_id}/label", json=label_body(response="Old pond,\r\na frog.\rSplash."))
    assert r.status_code == 201 and r.json()["response"] == "Old pond,\na frog.\nSplash."  # as the form stores it
    rank = json.loads(root.get("/admin/batches/r/export.jsonl").text)
    assert {k: rank[k] for k in (*meta, "time_spent_s")} == {**meta, "time_spent_s": 12.5}
    assert Ranking.from_json(rank).policy == "sft-1"  # `tiller rm` still reads it
    demo = json.loads(root.get("/admin/batches/d/export.jsonl").text)
    assert demo["family"] == "poem" and demo["response"] == "Old pond,\na frog.\nSplash."
    assert Demonstration.from_json(demo).family == "poem"


def test_chat_exports_are_consented_and_pseudonymous_by_default(chat_app: Any, login: Any, tmp_path: Path,
                                                                db_url: str) -> None:
    from tiller.data.formats import PromptRecord, Ranking
    from tiller.feedback.services.export import export_chat, export_prompts

    ana = login(chat_app, "ana")
    h = {"X-CSRF-Token": ana.csrf}
    cid = ana.post("/api/chat/conversations", json={"model": "tiny"}, headers=h).json()["id"]
    private = ana.post(f"/api/chat/conversations/{cid}/compare", headers=h,
                       json={"content": "my secret", "max_new_tokens": 4, "consent": False}).json()
    ana.post(f"/api/chat/comparisons/{private['id']}/choose", json={"choice": 0}, headers=h)
    shared = ana.post(f"/api/chat/conversations/{cid}/compare", headers=h,
                      json={"content": "share me", "max_new_tokens": 4, "consent": True}).json()
    chosen = ana.post(f"/api/chat/comparisons/{shared['id']}/choose", json={"choice": 1}, headers=h).json()
    ana.post(f"/api/chat/messages/{chosen['message_id']}/rating", json={"value": -1}, headers=h)

    out = tmp_path / "prompts.jsonl"
    assert export_prompts(db_url, out) == 1
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["prompt"][-1]["content"] == "share me" and row["user_id"].startswith("user-") and row["consent"]
    assert PromptRecord.from_json(row).user_id != "ana"
    assert export_prompts(db_url, out, consented_only=False, real_names=True) == 2
    assert {json.loads(x)["user_id"] for x in out.read_text().splitlines()} == {"ana"}

    assert export_chat(db_url, out, "comparisons") == 1
    (cmp,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert Ranking.from_json(cmp).ranking == [[1], [0]] and cmp["responses"] == shared["responses"]
    assert export_chat(db_url, out, "comparisons", consented_only=False) == 2
    assert export_chat(db_url, out, "ratings") == 1
    (rating,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert rating["rating"] == -1 and rating["response"] == chosen["content"]
    assert rating["prompt"][-1]["content"] == "share me"

    root = login(chat_app, "root")
    r = root.get("/admin/exports/chat-comparisons.jsonl")
    assert r.status_code == 200 and len(r.text.splitlines()) == 1
    assert len(root.get("/admin/exports/chat-prompts.jsonl?everything=1").text.splitlines()) == 2
    assert ana.get("/admin/exports/chat-prompts.jsonl").status_code == 403
