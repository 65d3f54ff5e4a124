"""The chat playground with a real ChatEngine on a tiny random model: streaming, history, consent,
thumbs and two-answer comparisons, and the prompt export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tiller.feedback.app import create_app
from tiller.feedback.models import ChatComparison, ChatMessage
from tiller.feedback.services.users import create_user

pytest.importorskip("tiller.serve.engine")


@pytest.fixture
def chat_app(tmp_path: Path, tiny_model_dir: Path) -> Any:
    from tiller.serve.engine import ChatEngine

    app = create_app(f"sqlite:///{tmp_path / 'chat.db'}", secret_key="s", models={"tiny": str(tiny_model_dir)},
                     engine_factory=lambda path: ChatEngine(path, device="cpu"))
    with app.state.sessions() as s:
        for name in ("ana", "ben"):
            create_user(s, name, "labeler", "correct horse")
    yield app
    app.state.db_engine.dispose()


def events(body: str) -> list[tuple[str, dict]]:
    out = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines.get("event", "message"), json.loads(lines["data"])))
    return out


def test_two_streamed_turns_keep_history_and_consent(chat_app: Any, login: Any, tmp_path: Path) -> None:
    from tiller.feedback.services.export import export_prompts

    ana = login(chat_app, "ana")
    h = {"X-CSRF-Token": ana.csrf}
    assert ana.post("/api/chat/conversations", json={"model": "nope"}, headers=h).status_code == 422
    cid = ana.post("/api/chat/conversations", json={"model": "tiny"}, headers=h).json()["id"]
    answers = []
    for turn, consent in (("Hello there", True), ("How are you?", False)):
        with ana.stream("POST", f"/api/chat/conversations/{cid}/turn", headers=h,
                        json={"content": turn, "consent": consent, "max_new_tokens": 12, "seed": 1}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            evs = events(r.read().decode())
        deltas = [d["delta"] for e, d in evs if e == "message"]
        kind, done = evs[-1]
        assert kind == "done" and len(deltas) >= 1
        assert "".join(deltas).strip() == done["content"]  # the stored answer is what streamed
        answers.append(done["content"])
    conv = ana.get(f"/api/chat/conversations/{cid}").json()
    assert [(m["role"], m["content"]) for m in conv["messages"]] == [
        ("user", "Hello there"), ("assistant", answers[0]), ("user", "How are you?"), ("assistant", answers[1])]
    out = tmp_path / "prompts.jsonl"
    # everything, under login names (by default: consented prompts only, pseudonymised; issue #15)
    assert export_prompts(str(chat_app.state.db_engine.url), out, consented_only=False, real_names=True) == 2
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[1] == {"id": rows[1]["id"], "user_id": "ana", "consent": False, "prompt": [
        {"role": "user", "content": "Hello there"}, {"role": "assistant", "content": answers[0]},
        {"role": "user", "content": "How are you?"}]}
    assert rows[0]["consent"] is True and rows[0]["prompt"] == [{"role": "user", "content": "Hello there"}]
    formats = pytest.importorskip("tiller.data.formats")  # what prompt curation reads
    assert [formats.PromptRecord.from_json(r).consent for r in rows] == [True, False]
    # a chat is private: another user gets 404, even by id
    ben = login(chat_app, "ben")
    assert ben.get(f"/api/chat/conversations/{cid}").status_code == 404
    r = ben.post(f"/api/chat/conversations/{cid}/turn", json={"content": "x"}, headers={"X-CSRF-Token": ben.csrf})
    assert r.status_code == 404


def test_thumbs_and_which_of_two_is_better(chat_app: Any, login: Any) -> None:
    ana = login(chat_app, "ana")
    h = {"X-CSRF-Token": ana.csrf}
    cid = ana.post("/api/chat/conversations", json={"model": "tiny"}, headers=h).json()["id"]
    comp = ana.post(f"/api/chat/conversations/{cid}/compare", headers=h,
                    json={"content": "Tell me about the cat", "max_new_tokens": 10}).json()
    assert len(comp["responses"]) == 2
    chosen = ana.post(f"/api/chat/comparisons/{comp['id']}/choose", json={"choice": 1}, headers=h).json()
    assert chosen["content"] == comp["responses"][1]
    assert ana.post(f"/api/chat/comparisons/{comp['id']}/choose", json={"choice": 0}, headers=h).status_code == 409
    r = ana.post(f"/api/chat/messages/{chosen['message_id']}/rating", json={"value": -1}, headers=h)
    assert r.json() == {"message_id": chosen["message_id"], "rating": -1}
    assert ana.post(f"/api/chat/messages/{chosen['message_id']}/rating", json={"value": 5}, headers=h).status_code == 422
    with chat_app.state.sessions() as s:
        assert s.scalar(select(ChatComparison.choice)) == 1
        msgs = list(s.scalars(select(ChatMessage).order_by(ChatMessage.position)))
    assert [(m.role, m.rating) for m in msgs] == [("user", None), ("assistant", -1)]
    ben = login(chat_app, "ben")
    r = ben.post(f"/api/chat/messages/{chosen['message_id']}/rating", json={"value": 1},
                 headers={"X-CSRF-Token": ben.csrf})
    assert r.status_code == 404


def test_failed_generation_reports_in_band_and_stores_no_answer(chat_app: Any, login: Any) -> None:
    ana = login(chat_app, "ana")
    h = {"X-CSRF-Token": ana.csrf}
    cid = ana.post("/api/chat/conversations", json={"model": "tiny"}, headers=h).json()["id"]
    too_long = "xq " * 1000  # far past the tiny model's 512 positions
    r = ana.post(f"/api/chat/conversations/{cid}/turn", json={"content": too_long}, headers=h)
    # refused before streaming, and nothing stored (issue #15: a stored failed turn broke every later one)
    assert r.status_code == 422 and "context window is 512" in r.json()["detail"]
    assert ana.get(f"/api/chat/conversations/{cid}").json()["messages"] == []
    r = ana.post(f"/api/chat/conversations/{cid}/turn", json={"content": "shorter", "max_new_tokens": 4}, headers=h)
    assert events(r.text)[-1][0] == "done"
    assert [m["content"] for m in ana.get(f"/api/chat/conversations/{cid}").json()["messages"]][:1] == ["shorter"]
