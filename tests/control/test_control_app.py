"""People as the comparison source: ``AppComparisonSource`` renders real HalfCheetah-v5 clips, imports them as
clip batches, and returns the answers people give through the app's HTTP API, each exactly once, also after
a restart from its saved state. SQLite, and PostgreSQL with TILLER_TEST_PG_URL."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mujoco")
gym = pytest.importorskip("gymnasium")
pytest.importorskip("sqlalchemy")
pytest.importorskip("argon2")

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import create_engine, select, text  # noqa: E402

from tiller.control import render  # noqa: E402
from tiller.control.app_source import (  # noqa: E402
    AppComparisonSource,
    AppSource,  # noqa: E402
    clip_id,
)
from tiller.control.config import AppSourceConfig  # noqa: E402
from tiller.control.predictor import Comparison  # noqa: E402
from tiller.control.segments import Segment, cut  # noqa: E402
from tiller.feedback.app import AppSettings, create_app  # noqa: E402
from tiller.feedback.models import Batch, User  # noqa: E402
from tiller.feedback.services.users import create_token, create_user  # noqa: E402

ENV = "HalfCheetah-v5"
PG_URL = os.environ.get("TILLER_TEST_PG_URL")


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 at its production cost is ~0.5 s a hash; tokens are all these tests use."""
    from argon2 import PasswordHasher

    from tiller.feedback import security

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[
    pytest.mark.postgres, pytest.mark.skipif(not PG_URL, reason="TILLER_TEST_PG_URL not set (eval \"$(.ci/postgres.sh)\")")])])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    assert PG_URL
    engine = create_engine(PG_URL)  # a fresh schema, as tests/feedback/conftest.py does
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return PG_URL


@pytest.fixture(scope="module")
def segments() -> list[Segment]:
    """Four 6-step clips of one random-action HalfCheetah episode (with their MuJoCo states)."""
    env = gym.make(ENV)
    env.reset(seed=0)
    env.action_space.seed(0)
    obs, acts, rewards, states = [], [], [], []
    o = env.reset(seed=0)[0]
    for _ in range(24):
        states.append(np.concatenate([env.unwrapped.data.qpos, env.unwrapped.data.qvel]))
        a = env.action_space.sample()
        obs.append(o)
        acts.append(a)
        o, r, *_ = env.step(a)
        rewards.append(r)
    env.close()
    return cut(np.array(obs), np.array(acts), np.array(rewards), np.array(states), 6, ENV, 24, "run0-ep0")


@pytest.fixture
def people(db_url: str, tmp_path: Path) -> Iterator[tuple[Any, dict[str, TestClient]]]:
    """The app (serving the clips folder) and an API client per labeler, ana and ben."""
    try:
        render.gl_backend()
    except render.RenderError as e:
        pytest.skip(str(e))
    app = create_app(db_url, secret_key="t", settings=AppSettings(clips_dir=tmp_path / "clips"))
    clients = {}
    with app.state.sessions() as s:
        for name in ("ana", "ben"):
            token = create_token(s, create_user(s, name, "labeler", "correct horse"))
            clients[name] = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    yield app, clients
    app.state.db_engine.dispose()


def answer_all(client: TestClient, batch: str, choices: list[str]) -> None:
    """A labeler answers their pending assignments of ``batch`` in order, as a script would."""
    for choice in choices:
        a = client.get(f"/api/assignments/next?batch={batch}").json()
        for url in a["clips"]:  # the clips the source rendered are the ones the app serves
            r = client.get(url)
            assert r.status_code == 200 and r.content[4:8] == b"ftyp"
        r = client.post(f"/api/assignments/{a['id']}/label", json={"choice": choice, "time_spent_s": 3.0},
                        headers={"Idempotency-Key": str(uuid.uuid4())})
        assert r.status_code == 201, r.text


def same(c: Comparison, a: Segment, b: Segment, mu: float) -> bool:
    return (c.a.id, c.b.id, c.mu) == (a.id, b.id, mu) and np.array_equal(c.a.obs, a.obs) \
        and np.array_equal(c.b.states, b.states) and np.array_equal(c.a.true_rewards, a.true_rewards)


def restart(state: dict[str, np.ndarray], path: Path, db_url: str, clips: Path) -> AppComparisonSource:
    """A new source from ``state`` saved to disk and loaded back, as a resumed run would."""
    np.savez(path, **state)
    src = AppComparisonSource(db_url, clips, "ctl", ENV, size=64)
    with np.load(path, allow_pickle=False) as d:
        src.load_state_dict(d)
    return src


def test_ask_answer_collect_exactly_once_across_restarts(people: Any, segments: list[Segment], db_url: str,
                                                         tmp_path: Path) -> None:
    app, who = people
    s0, s1, s2, s3 = segments
    clips = tmp_path / "clips"
    src = AppComparisonSource(db_url, clips, "ctl", ENV, overlap=1, task="Which clip runs forward faster?", size=64)
    src.ask([(s0, s1), (s2, s3)])  # returns without any answer
    assert sorted(p.name for p in clips.iterdir()) == sorted(f"{clip_id('ctl', s)}.mp4" for s in segments)
    assert src.collect() == [] and src.pending() == 2
    with app.state.sessions() as s:
        assert list(s.scalars(select(Batch.name))) == ["ctl-1"]

    # overlap 1: the first pair went to ana, the second to ben (least loaded first)
    answer_all(who["ana"], "ctl-1", ["right"])
    answer_all(who["ben"], "ctl-1", ["cant_tell"])
    got = src.collect()
    assert len(got) == 1 and same(got[0], s0, s1, 0.0)  # can't tell: recorded in the app, never returned
    assert src.collect() == [] and src.pending() == 0

    # a second batch, saved before anyone answers it; the run dies; ana answers while it is down
    src.ask([(s3, s1)])
    saved = src.state_dict()
    src.close()
    answer_all(who["ana"], "ctl-2", ["equal"])
    src = restart(saved, tmp_path / "state.npz", db_url, clips)
    got = src.collect()
    assert len(got) == 1 and same(got[0], s3, s1, 0.5)  # the segment itself, rebuilt from the saved arrays
    assert src.collect() == []
    after = src.state_dict()
    src.close()
    src = restart(after, tmp_path / "state2.npz", db_url, clips)
    assert src.collect() == []  # nothing twice, also after a restart
    # settled batches leave the state: nothing open, no segments kept
    assert int(after["count"]) == 0 and str(after["batches"]) == "{}"

    # a run restarted from an older state asks again: a fresh name, never a clash with the batches made since
    stale = AppComparisonSource(db_url, clips, "ctl", ENV, size=64)
    stale.ask([(s2, s0)])
    with app.state.sessions() as s:
        assert list(s.scalars(select(Batch.name).order_by(Batch.id))) == ["ctl-1", "ctl-2", "ctl-3"]
    src.close()
    stale.close()


def test_overlap_gives_one_comparison_per_answer(people: Any, segments: list[Segment], db_url: str,
                                                 tmp_path: Path) -> None:
    app, who = people
    s0, s1, *_ = segments
    src = AppComparisonSource(db_url, tmp_path / "clips", "ov", ENV, overlap=2, size=64)
    src.ask([(s1, s0)])
    answer_all(who["ben"], "ov-1", ["left"])
    first = src.collect()
    assert len(first) == 1 and same(first[0], s1, s0, 1.0) and src.pending() == 1
    answer_all(who["ana"], "ov-1", ["right"])  # people disagree: both answers count (the paper's dataset)
    second = src.collect()
    assert len(second) == 1 and same(second[0], s1, s0, 0.0)
    assert src.collect() == []
    with app.state.sessions() as s:
        assert {u.name for u in s.scalars(select(User))} == {"ana", "ben"}
    src.close()


def test_the_loops_source_keeps_its_state_in_json(people: Any, segments: list[Segment], db_url: str,
                                                  tmp_path: Path) -> None:
    """``source: app`` in the loop: its state rides in the loop's JSON state file (a base64 .npz inside)."""
    app, who = people
    s0, s1, *_ = segments
    cfg = AppSourceConfig(db=db_url)
    src = AppSource(cfg, batch_prefix="run-a", clips_dir=tmp_path / "clips", env_id=ENV)
    src.ask([(s0, s1)])
    saved = json.loads(json.dumps(src.state_dict()))
    src.close()
    answer_all(who["ana"], "run-a-1", ["left"])
    again = AppSource(cfg, batch_prefix="run-a", clips_dir=tmp_path / "clips", env_id=ENV)
    again.load_state_dict(saved)
    got = again.collect()
    assert len(got) == 1 and same(got[0], s0, s1, 1.0) and again.collect() == []
    again.close()


def test_the_loops_source_asks_in_chunks_at_the_configured_size_and_rate(people: Any, segments: list[Segment],
                                                                        db_url: str, tmp_path: Path) -> None:
    """``app.chunk`` pairs per batch (people start on the first while the rest render); ``app.size`` and
    ``app.fps`` reach the videos."""
    import imageio_ffmpeg  # type: ignore[import-untyped]

    app, who = people
    s0, s1, s2, s3 = segments
    cfg = AppSourceConfig(db=db_url, chunk=2, size=32, fps=10)
    src = AppSource(cfg, batch_prefix="ch", clips_dir=tmp_path / "clips", env_id=ENV)
    src.ask([(s0, s1), (s2, s3), (s1, s2)])
    with app.state.sessions() as s:
        batches = {b.name: len(b.items) for b in s.scalars(select(Batch))}
    assert batches == {"ch-1": 2, "ch-2": 1}
    meta = next(imageio_ffmpeg.read_frames(str(tmp_path / "clips" / f"{clip_id('ch', s0)}.mp4")))
    assert tuple(meta["size"]) == (32, 32) and meta["fps"] == 10
    answer_all(who["ana"], "ch-2", ["left"])
    answer_all(who["ana"], "ch-1", ["right"])
    answer_all(who["ben"], "ch-1", ["equal"])
    got = {(c.a.id, c.b.id, c.mu) for c in src.collect()}
    assert got == {(s1.id, s2.id, 1.0), (s0.id, s1.id, 0.0), (s2.id, s3.id, 0.5)} or \
        got == {(s1.id, s2.id, 1.0), (s0.id, s1.id, 0.5), (s2.id, s3.id, 0.0)}  # who got which pair of ch-1
    src.close()
    with pytest.raises(Exception, match="chunk"):
        AppSourceConfig(chunk=0).validate()


def test_bad_inputs(segments: list[Segment], tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(Exception, match="not a valid name"):
        AppComparisonSource(db, tmp_path, "../up", ENV)
    src = AppComparisonSource(db, tmp_path / "clips", "x", ENV, size=64)
    flat = Segment(id="p-0", obs=segments[0].obs, acts=segments[0].acts, true_rewards=segments[0].true_rewards,
                   states=None, env_id="Pendulum-v1", step=6)
    with pytest.raises(ValueError, match="no MuJoCo states"):
        src.ask([(flat, segments[0])])
    other = AppComparisonSource(db, tmp_path / "clips", "y", ENV)
    with pytest.raises(ValueError, match="'x'-N, not 'y'-N"):
        other.load_state_dict(src.state_dict())
    src.ask([])  # nothing to ask: no batch, no database needed
    assert src.collect() == [] and src.pending() == 0
    # an odd segment id still makes a safe clip id, the same each time
    odd = Segment(id="run/0 ep:1", obs=flat.obs, acts=flat.acts, true_rewards=flat.true_rewards,
                  states=segments[0].states, env_id=ENV, step=6)
    assert clip_id("x", odd) == clip_id("x", odd) and clip_id("x", odd).startswith("x.seg-")
    assert clip_id("x", segments[0]) == "x.run0-ep0-0"
