"""``tiller control`` with people as the source, end to end: ``train_control(source=app)`` runs in a thread, the
labeling app is served by uvicorn on the same SQLite database and clips folder, and two scripted labelers
answer every clip pair they are given through the HTTP API (API tokens, both videos fetched first).

What must hold (Christiano et al. 2017 sec. 2.1, docs/control.md): the loop waits for ``app.min_first``
answers before RL, then never waits; every answer it trains on is one the people gave, each once, in the
order given ("equal" as mu 0.5, "can't tell" never); its batches are ``control-RUN-N`` of the scheduled
sizes; the manifest counts the labels used."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("mujoco")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from sqlalchemy import select  # noqa: E402

from helpers import live_server  # noqa: E402
from tiller.config import from_dict  # noqa: E402
from tiller.control import render  # noqa: E402
from tiller.control.config import ControlConfig  # noqa: E402
from tiller.control.loop import train_control  # noqa: E402
from tiller.control.queries import label_schedule  # noqa: E402
from tiller.control.store import load_comparisons  # noqa: E402
from tiller.feedback.app import AppSettings, create_app  # noqa: E402
from tiller.feedback.models import Assignment, Batch, Item, User  # noqa: E402
from tiller.feedback.services.users import create_token  # noqa: E402
from tiller.runs import read_manifest  # noqa: E402
from tiller.tracking import read_metrics  # noqa: E402

PREFIX = "control-cheetah"  # the default batch prefix of a run whose folder is .../cheetah/control
MU = {"left": 1.0, "right": 0.0, "equal": 0.5}
# 1 env x 256 steps a rollout, 6 rollouts; labels asked: 4 first, then [2, 1, 1, 0, 1] after the first 5 (the
# schedule's last one, due at the end, is not asked: nobody could answer it in time)
RUN = dict(env="HalfCheetah-v5", total_steps=1536, labels=10, initial_labels=4, segment_length=8, n_envs=1,
           refit_every=256, checkpoint_every=0, eval_episodes=1, report_to=[], source="app",
           ppo=dict(n_steps=256, batch_size=64, n_epochs=2), predictor=dict(epochs=3, members=2),
           app=dict(min_first=3, poll=0.1, timeout=300, task="Which cheetah runs forward faster?"))


def choice_for(k: int) -> str:
    """The k-th answer given (0-based): alternate left/right, but one "equal" (k=1) and one "can't tell" (k=3)."""
    return {1: "equal", 3: "cant_tell"}.get(k, "left" if k % 2 == 0 else "right")


class Labelers:
    """ana and ben, each an HTTP client with their own API token, answering in one thread: ``given`` lists
    (assignment id, choice) in the order the answers were stored."""

    def __init__(self, url: str, tokens: dict[str, str], clips: Path):
        self.clients = {n: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {t}"}, timeout=60)
                        for n, t in tokens.items()}
        self.clips = clips
        self.given: list[tuple[int, str]] = []
        self.videos: dict[int, tuple[bytes, bytes]] = {}

    def answer_one(self) -> bool:
        """Answer one pending assignment of whoever has one; False when nobody has any."""
        for client in self.clients.values():
            r = client.get("/api/assignments/next")
            if r.status_code == 404:
                continue
            assert r.status_code == 200, r.text
            a = r.json()
            assert a["kind"] == "clip" and a["clips"] == [f"/api/assignments/{a['id']}/clips/{s}" for s in (0, 1)]
            assert a["prompt"][0]["content"] == RUN["app"]["task"]
            videos = []
            for url in a["clips"]:  # a person looks at both clips before answering
                v = client.get(url)
                assert v.status_code == 200 and v.headers["content-type"] == "video/mp4", v.text[:200]
                assert v.content[4:8] == b"ftyp"  # an MP4 (ISO base media file)
                videos.append(v.content)
            self.videos[a["id"]] = (videos[0], videos[1])
            choice = choice_for(len(self.given))
            r = client.post(f"/api/assignments/{a['id']}/label", json={"choice": choice, "time_spent_s": 2.0},
                            headers={"Idempotency-Key": str(uuid.uuid4())})
            assert r.status_code == 201, r.text
            self.given.append((a["id"], choice))
            return True
        return False

    def answer(self, n: int, until: Callable[[], bool]) -> None:
        """Answer ``n`` assignments, waiting for them to appear while ``until()`` is false."""
        while n > 0:
            if self.answer_one():
                n -= 1
            else:
                assert not until(), f"{n} more answers wanted, none to give"
                time.sleep(0.05)

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def wait_for(cond: Callable[[], bool], what: str, alive: Callable[[], bool], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert alive(), f"the loop stopped before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow  # ~20 s on two busy cores: 6 PPO rollouts, 18 clips rendered, 9 answers over HTTP
def test_people_in_the_app_teach_the_loop(db: tuple[str, Any], tmp_path: Path) -> None:
    try:
        render.gl_backend()
    except render.RenderError as e:
        pytest.skip(str(e))
    t_start = time.monotonic()
    url, sessions = db
    clips = tmp_path / "clips"
    out = tmp_path / "cheetah" / "control"
    cfg = from_dict(ControlConfig, {**RUN, "app": {**RUN["app"], "db": url, "clips_dir": str(clips)}})
    with sessions() as s:
        tokens = {u.name: create_token(s, u) for u in s.scalars(select(User))}
    app = create_app(url, secret_key="t", settings=AppSettings(clips_dir=clips))

    def batches() -> list[str]:
        with sessions() as s:
            return list(s.scalars(select(Batch.name).order_by(Batch.id)))

    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["metrics"] = train_control(cfg, out)
        except BaseException as e:  # noqa: BLE001  # reported by the test thread
            result["error"] = e

    loop = threading.Thread(target=run, daemon=True)
    logs = out.parent / "logs"
    with live_server(app) as base:
        people = Labelers(base, tokens, clips)
        loop.start()
        alive, done = loop.is_alive, lambda: not loop.is_alive()
        try:
            # 1. the first batch (initial_labels pairs of random-policy clips); RL waits for min_first answers
            wait_for(lambda: batches() == [f"{PREFIX}-1"], "the first batch", alive)
            people.answer(2, done)
            time.sleep(1.0)  # ten of the loop's polls
            assert loop.is_alive() and read_metrics(logs, "control") == [], "RL started on 2 of min_first=3 answers"
            people.answer(1, done)
            # 2. nobody answers now; the loop goes on: two PPO rollouts, a batch asked after each
            wait_for(lambda: len(read_metrics(logs, "control")) >= 3, "the second rollout's end", alive)
            rows = read_metrics(logs, "control")
            assert [(r["step"], r["labels/used"]) for r in rows[:3]] == [(0, 3), (256, 3), (512, 3)]
            assert batches()[:3] == [f"{PREFIX}-{i}" for i in (1, 2, 3)]
            # 3. answer everything, as it comes, until the run ends; then what is left
            while loop.is_alive():
                if not people.answer_one():
                    time.sleep(0.05)
            while people.answer_one():
                pass
        finally:
            loop.join(timeout=300)
            people.close()
    app.state.db_engine.dispose()
    assert "error" not in result, repr(result.get("error"))
    metrics = result["metrics"]

    # which pair each answer was about: the item's two clip ids, PREFIX.SEGMENT_ID (left = a, right = b)
    with sessions() as s:
        items = {aid: (name, list(resp)) for aid, name, resp in s.execute(
            select(Assignment.id, Batch.name, Item.responses).join(Item, Item.id == Assignment.item_id)
            .join(Batch, Batch.id == Item.batch_id))}
        sizes = [len(list(s.scalars(select(Item.id).join(Batch).where(Batch.name == n)))) for n in batches()]
        statuses = set(s.scalars(select(Assignment.status)))
    for aid, (left, right) in people.videos.items():  # the videos served are the clips of that item, in order
        a, b = items[aid][1]
        assert (left, right) == ((clips / f"{a}.mp4").read_bytes(), (clips / f"{b}.mp4").read_bytes())

    def seg(clip: str) -> str:
        assert clip.startswith(f"{PREFIX}.")
        return clip[len(PREFIX) + 1:]

    given = [(items[aid][0], seg(items[aid][1][0]), seg(items[aid][1][1]), MU[c])
             for aid, c in people.given if c != "cant_tell"]
    used = [(c.a.id, c.b.id, c.mu) for c in load_comparisons(out / "comparisons.npz")]

    # every assignment answered; 8 answers of 9 pairs count: "can't tell" is no comparison, "equal" is 0.5
    assert statuses == {"done"} and len(people.given) == 9 and len(given) == 8
    assert [c for _, c in people.given][:4] == ["left", "equal", "left", "cant_tell"]
    # the loop trained on the answers in the order they were given, each once; only answers to its last batch
    # can be missing, and only if the labelers took longer than PPO's last update and rollout (never seen)
    n = len(used)
    assert [g[1:] for g in given[:n]] == used, (given, used)
    last = batches()[-1]
    assert all(g[0] == last for g in given[n:]), f"answers given in time but not used: {given[n:]}"
    assert sum(mu == 0.5 for *_, mu in used) == 1

    # batches PREFIX-1..N of the schedule's sizes; the metrics and the manifest count the same labels
    curve = json.loads((out / "curve.json").read_text())["curve"]
    schedule = label_schedule(10, 1536, 4)
    steps = [r["step"] for r in curve]
    assert steps == list(range(0, 1537, 256))
    due = [schedule(t) for t in steps]
    assert due == [4, 6, 7, 8, 8, 9, 10]  # 4 + floor(6 * log(1 + t / 307.2) / log 6), worked by hand
    expected_sizes = [4] + [d - p for p, d in zip(due[:-2], due[1:-1], strict=True) if d > p]  # none at the end
    assert expected_sizes == [4, 2, 1, 1, 1]
    assert batches() == [f"{PREFIX}-{i}" for i in range(1, len(expected_sizes) + 1)] and sizes == expected_sizes
    manifest = read_manifest(out)
    assert manifest is not None and manifest["config"]["source"] == "app"
    assert manifest["metrics"]["labels/used"] == metrics["labels/used"] == curve[-1]["labels"] == n
    assert manifest["metrics"]["labels/asked"] == sum(sizes) == curve[-1]["asked"] == 9
    assert read_metrics(logs, "control")[-1]["labels/used"] == n
    print(f"\n{len(people.given)} answers given, {n} used, {time.monotonic() - t_start:.1f} s")
