"""The clip-comparison page in a real browser: Playwright driving Debian's Chromium against the app served by
uvicorn, with clips rendered from real HalfCheetah-v5 states by tiller.control.render.

Run ``.ci/chromium.sh`` and ``.ci/mujoco-gl.sh`` first. A screenshot goes to tmp_path (and to
docs/screenshots/ with ``TILLER_UPDATE_SCREENSHOTS=1``), as in test_feedback_browser.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from helpers import CHROMIUM, chromium_page, keep_screenshot, live_server
from tiller.feedback.app import AppSettings, create_app
from tiller.feedback.models import Label
from tiller.feedback.records import parse_lines
from tiller.feedback.services.batches import import_batch
from tiller.feedback.services.export import batch_records
from tiller.feedback.services.users import create_user

TASK = "Which clip is closer to a backflip?"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium missing (run .ci/chromium.sh)"),
]


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    """Two 1.5-second clips (30 frames at 20 fps, 256 px) of two random-action HalfCheetah episodes."""
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("mujoco")
    from tiller.control import render

    try:
        render.gl_backend()
    except render.RenderError as e:
        pytest.skip(str(e))
    folder = tmp_path / "clips"
    for seed in (0, 1):
        env = gym.make("HalfCheetah-v5")
        env.reset(seed=seed)
        env.action_space.seed(seed)
        states = []
        for _ in range(30):
            states.append(np.concatenate([env.unwrapped.data.qpos, env.unwrapped.data.qvel]))
            env.step(env.action_space.sample())
        env.close()
        render.render_clip("HalfCheetah-v5", np.array(states), folder / f"cheetah-{seed}.mp4", size=256)
    return folder


@pytest.fixture
def served(tmp_path: Path, clips: Path) -> Iterator[tuple[str, Any]]:
    """(base URL, app): the app with the clips folder, in a uvicorn thread."""
    pytest.importorskip("uvicorn")
    app = create_app(f"sqlite:///{tmp_path / 'browser.db'}", secret_key="browser",
                     settings=AppSettings(clips_dir=clips))
    with app.state.sessions() as s:
        create_user(s, "ana", "labeler", "correct horse")
    with live_server(app) as url:
        yield url, app
    app.state.db_engine.dispose()


@pytest.fixture
def page() -> Iterator[Any]:
    with chromium_page(width=1200, extra_args=("--autoplay-policy=no-user-gesture-required",)) as pg:
        yield pg


PLAYING = """() => Array.from(document.querySelectorAll('.clip video')).map((v) => ({
  ready: v.readyState, t: v.currentTime, paused: v.paused, muted: v.muted, loop: v.loop, w: v.videoWidth,
  error: v.error && v.error.code }))"""


def test_compare_two_playing_clips_with_the_keyboard(served: tuple[str, Any], page: Any, tmp_path: Path) -> None:
    base, app = served
    pairs = [{"id": "q0", "a": "cheetah-0", "b": "cheetah-1", "task": TASK},
             {"id": "q1", "a": "cheetah-1", "b": "cheetah-0", "task": TASK}]
    with app.state.sessions() as s:
        items = parse_lines("\n".join(json.dumps(p) for p in pairs), "clip", clips_dir=app.state.settings.clips_dir)
        import_batch(s, "flips", "clip", 1, items)
    problems: list[str] = []  # script errors, CSP refusals, failed requests (the browser's own favicon aside)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" and "404" not in m.text else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)

    page.goto(f"{base}/login")
    page.fill('input[name="name"]', "ana")
    page.fill('input[name="password"]', "correct horse")
    page.click('button[type="submit"]')
    page.wait_for_url(f"{base}/")
    assert "Compare clips" in page.inner_text("table")
    page.click("text=Start")
    page.wait_for_selector("#clip-form")
    assert page.inner_text("#task") == TASK

    # both videos load and play by themselves (muted, looping): time moves on in each
    page.wait_for_function("() => Array.from(document.querySelectorAll('.clip video')).every("
                           "(v) => v.readyState >= 2 && !v.paused && v.currentTime > 0)")
    before = page.evaluate(PLAYING)
    page.wait_for_timeout(500)
    after = page.evaluate(PLAYING)
    for b, a in zip(before, after, strict=True):
        assert a["error"] is None and a["w"] == 256 and a["muted"] and a["loop"] and not a["paused"]
        assert a["t"] != b["t"], (before, after)  # (a 1.5 s loop: "moved", not "grew")
    screenshot = tmp_path / "clips.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    keep_screenshot(screenshot, "clips.png")

    # answer with the keyboard: 2 (right is better), then the down arrow (equally good) on the next pair
    page.wait_for_timeout(200)  # so the page's timer has something to report
    first = page.url
    page.keyboard.press("2")
    page.wait_for_url(lambda url: url != first and "/assignments/" in url)
    page.wait_for_selector("#clip-form")
    page.keyboard.press("ArrowDown")
    page.wait_for_url(f"{base}/?done=1")
    assert problems == []

    with app.state.sessions() as s:
        labels = list(s.scalars(select(Label).order_by(Label.id)))
        records = list(batch_records(s, "flips"))
    assert [(lb.choice, lb.ranking) for lb in labels] == [("right", [[1], [0]]), ("equal", [[0, 1]])]
    assert labels[0].time_spent_s > 0
    assert [(r["id"], r["a"], r["b"], r["mu"]) for r in records] == [
        ("q0", "cheetah-0", "cheetah-1", 0.0), ("q1", "cheetah-1", "cheetah-0", 0.5)]
