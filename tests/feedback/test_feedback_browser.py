"""Real browser tests: Playwright driving Debian's Chromium against the app served by uvicorn on 127.0.0.1.

Run ``.ci/chromium.sh`` first. Screenshots are saved to each test's tmp_path; set
``TILLER_UPDATE_SCREENSHOTS=1`` to also copy them to docs/screenshots/ (used by the README), so an ordinary
test run never rewrites tracked files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from helpers import CHROMIUM, chromium_page, keep_screenshot, live_server
from tiller.feedback.app import create_app
from tiller.feedback.models import Assignment, ChatMessage, ChatPrompt, Label
from tiller.feedback.records import parse_lines
from tiller.feedback.services.batches import import_batch
from tiller.feedback.services.export import export_batch
from tiller.feedback.services.users import create_user

EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium missing (run .ci/chromium.sh)"),
]


@pytest.fixture
def served(tmp_path: Path, tiny_model_dir: Path) -> Iterator[tuple[str, Any, str]]:
    """(base URL, app, db URL): the app with a real ChatEngine on the tiny model, in a uvicorn thread."""
    pytest.importorskip("uvicorn")
    from tiller.serve.engine import ChatEngine

    db_url = f"sqlite:///{tmp_path / 'browser.db'}"
    app = create_app(db_url, secret_key="browser", models={"tiny-gpt2": str(tiny_model_dir)},
                     engine_factory=lambda path: ChatEngine(path, device="cpu"))
    with app.state.sessions() as s:
        create_user(s, "root", "admin", "correct horse")
        create_user(s, "ana", "labeler", "correct horse")
    with live_server(app) as url:
        yield url, app, db_url
    app.state.db_engine.dispose()


@pytest.fixture
def page() -> Iterator[Any]:
    with chromium_page(width=1360) as pg:
        yield pg


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """Save a full-page PNG under tmp_path; copy it to docs/screenshots/ only with TILLER_UPDATE_SCREENSHOTS=1."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, f"{name}: not a PNG screenshot"
    keep_screenshot(path, name)
    return path


def log_in(page: Any, base: str, name: str) -> None:
    page.goto(f"{base}/login")
    page.fill('input[name="name"]', name)
    page.fill('input[name="password"]', "correct horse")
    page.click('button[type="submit"]')
    page.wait_for_url(f"{base}/")


def test_rank_four_answers_with_the_keyboard(served: tuple[str, Any, str], page: Any, tmp_path: Path) -> None:
    base, app, db_url = served
    record = {
        "id": "capital-1",
        "prompt": [{"role": "system", "content": "Answer briefly."},
                   {"role": "user", "content": "What is the capital of France, and why is it **famous**?"}],
        "responses": [
            "Paris. It is famous for the Eiffel Tower, the Louvre and its cafés.",
            "The capital of France is Lyon.",
            f"Paris is the capital. {EVIL}",
            "Paris — known for art, food and the `Seine` river.",
        ],
    }
    with app.state.sessions() as s:
        import_batch(s, "capitals", "rank", 1, parse_lines(json.dumps(record), "rank"))
    log_in(page, base, "ana")
    page.click("text=Start")
    page.wait_for_selector("#rank-form")
    # model text is shown as text and runs nothing
    assert page.evaluate("window.__pwned") is None
    assert EVIL in page.inner_text("#answer-2 .text")
    for i, score in enumerate([6, 1, 5, 6]):
        page.locator(f"#answer-{i} .likert label").nth(score - 1).click()
    page.click("#answer-1 .flags summary")
    page.check('#answer-1 input[value="hallucination"]')
    # drag: answer 3 onto the bar, answer 1 onto its group (a tie), then clear with Esc
    page.drag_and_drop("#answer-2", "#groups .slot")
    page.drag_and_drop("#pool .chip >> text=1", "#groups .group")
    assert page.input_value("#ranking-text") == "1 = 3"
    page.click("h1")  # focus back on the page, away from the form controls
    page.keyboard.press("Escape")
    assert page.input_value("#ranking-text") == ""
    for key in ["1", "4", "=", "3", "2"]:  # 1 > 4 = ... then "=" ties 4 with 1; 3; 2
        page.keyboard.press(key)
    assert page.input_value("#ranking-text") == "1 = 4 > 3 > 2"
    page.keyboard.press("Backspace")  # undo the 2 ...
    page.keyboard.press("2")  # ... and pick it again
    assert page.locator("#groups .group.tie .chip").all_inner_texts() == ["1", "4"]
    screenshot(page, tmp_path, "ranking.png")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/?done=1")
    assert page.evaluate("window.__pwned") is None

    with app.state.sessions() as s:
        (label,) = s.scalars(select(Label)).all()
    assert label.ranking == [[0, 3], [2], [1]]
    assert label.likert == [6, 1, 5, 6] and label.flags[1] == ["hallucination"]
    assert label.time_spent_s > 0
    out = tmp_path / "export.jsonl"
    assert export_batch(db_url, "capitals", out) == 1
    exported = json.loads(out.read_text())
    assert exported.pop("time_spent_s") == label.time_spent_s  # exported with the label (issue #15)
    assert exported == {"prompt": record["prompt"], "responses": record["responses"], "ranking": [[0, 3], [2], [1]],
                        "labeler": "ana", "likert": [6, 1, 5, 6],
                        "flags": [[], ["hallucination"], [], []], "id": "capital-1"}


def test_write_a_demonstration(served: tuple[str, Any, str], page: Any, tmp_path: Path) -> None:
    base, app, db_url = served
    record = {"id": "haiku-1", "prompt": [{"role": "user", "content": f"Write a haiku about rain. {EVIL}"}]}
    with app.state.sessions() as s:
        import_batch(s, "haiku", "demo", 1, parse_lines(json.dumps(record), "demo"))
    log_in(page, base, "ana")
    page.click("text=Start")
    page.wait_for_selector("#demo-form")
    assert page.evaluate("window.__pwned") is None  # the prompt is shown as text
    answer = "Soft rain on the roof —\nthe gutters hum <b>quietly</b>,\nthe street turns to glass."
    page.fill('#demo-form textarea[name="response"]', answer)
    page.wait_for_timeout(150)  # so the form's timer has something to report
    page.keyboard.press("Control+Enter")  # the form's keyboard submit
    page.wait_for_url(f"{base}/?done=1")

    with app.state.sessions() as s:
        (label,) = s.scalars(select(Label)).all()
        (assignment,) = s.scalars(select(Assignment)).all()
    assert label.response == answer and label.ranking is None
    assert label.time_spent_s > 0 and assignment.status == "done"
    out = tmp_path / "demos.jsonl"
    assert export_batch(db_url, "haiku", out) == 1
    exported = json.loads(out.read_text())
    assert exported.pop("time_spent_s") == label.time_spent_s
    assert exported == {"prompt": record["prompt"], "response": answer, "labeler": "ana", "id": "haiku-1"}


def test_playground_two_streamed_turns(served: tuple[str, Any, str], page: Any, tmp_path: Path) -> None:
    base, app, _ = served
    log_in(page, base, "ana")
    page.goto(f"{base}/playground")
    streamed = []
    page.on("response", lambda r: streamed.append(r.headers.get("content-type", "")) if "/turn" in r.url else None)
    page.check("#consent")
    for n, text in enumerate(["Hello there!", "How are you today?"], start=1):
        page.fill("#chat-input", text)
        page.keyboard.press("Enter")
        page.wait_for_selector(f".chat .msg.assistant:nth-of-type({2 * n}) .thumbs")
    assert streamed == ["text/event-stream; charset=utf-8"] * 2
    assert page.locator(".chat .msg.user .text").all_inner_texts() == ["Hello there!", "How are you today?"]
    answers = page.locator(".chat .msg.assistant .text").all_inner_texts()
    assert len(answers) == 2 and all(a.strip() for a in answers)
    page.locator(".chat .msg.assistant .thumbs button").first.click()
    page.wait_for_selector(".thumbs button.on")
    screenshot(page, tmp_path, "chat.png")

    with app.state.sessions() as s:
        msgs = list(s.scalars(select(ChatMessage).order_by(ChatMessage.id)))
        prompts = list(s.scalars(select(ChatPrompt).order_by(ChatPrompt.id)))
    assert [m.role for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert [m.content for m in msgs if m.role == "assistant"] == [a.strip() for a in answers]
    assert msgs[1].rating == 1
    assert [p.consent for p in prompts] == [True, True] and len(prompts[1].prompt) == 3
