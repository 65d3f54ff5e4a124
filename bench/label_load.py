"""Load test of the labeling app: many labelers submitting at once against the real server (uvicorn).

    python bench/label_load.py                       # 50 labelers x 30 s on a fresh SQLite file
    python bench/label_load.py --db postgresql+psycopg://... --labelers 50 --seconds 30

Each simulated labeler loops: fetch its next assignment, submit a ranking with a fresh idempotency key;
every ``--retry-every``-th submission is sent twice at the same time and once more afterwards with the
same key (a double click and a retry after a lost response). At the end every accepted label must be in
the database exactly once. Prints accepted / stored / duplicates / lost and requests/s; exits 1 if any
label was lost or duplicated. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import func, insert, select

from tiller.feedback.db import init_db, make_engine, session_factory
from tiller.feedback.models import Assignment, Item, Label, User
from tiller.feedback.records import parse_lines
from tiller.feedback.security import hash_password
from tiller.feedback.services.batches import import_batch
from tiller.feedback.services.users import create_token

BATCH = "load"


def note(tally: Tally, kind: str) -> None:
    tally.errors += 1
    tally.error_kinds[kind] = tally.error_kinds.get(kind, 0) + 1


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0  # transport errors and 5xx
    error_kinds: dict[str, int] = field(default_factory=dict)
    replays: int = 0
    accepted: dict[int, int] = field(default_factory=dict)  # label id -> assignment id
    mismatched: int = 0  # a replay that named a different label than the first answer: a duplicate


def setup(db_url: str, labelers: int, items: int, overlap: int, k: int = 4) -> list[str]:
    """Fresh users, tokens and one batch; returns the labelers' API tokens."""
    init_db(db_url)
    engine = make_engine(db_url)
    factory = session_factory(engine)
    shared_hash = hash_password(uuid.uuid4().hex)  # nobody logs in with a password here
    tokens = []
    with factory() as s:
        names = [f"load{i:03d}" for i in range(labelers)]
        s.execute(insert(User), [{"name": n, "role": "labeler", "password_hash": shared_hash} for n in names])
        s.commit()
        users = list(s.scalars(select(User).where(User.name.in_(names)).order_by(User.name)))
        tokens = [create_token(s, u) for u in users]
        lines = "\n".join(
            json.dumps({"id": f"q{i}", "prompt": f"Question {i}?", "responses": [f"answer {j}" for j in range(k)]})
            for i in range(items)
        )
        import_batch(s, BATCH, "rank", overlap, parse_lines(lines, "rank"), labelers=names)
    engine.dispose()
    return tokens


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(db_url: str, port: int, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tiller.feedback.cli", "serve", "--db", db_url, "--host", "127.0.0.1",
           "--port", str(port), "--no-access-log"]
    env = {**os.environ, "TILLER_APP_SECRET": uuid.uuid4().hex}
    proc = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/login", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in 60 s")


async def labeler(base: str, token: str, until: float, retry_every: int, tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:

        async def post(aid: int, body: dict, key: str) -> httpx.Response | None:
            tally.requests += 1
            try:
                r = await client.post(f"/api/assignments/{aid}/label", json=body, headers={"Idempotency-Key": key})
            except httpx.HTTPError as e:
                note(tally, type(e).__name__)
                return None
            if r.status_code >= 500:
                note(tally, f"http {r.status_code}")
            return r

        n = 0
        while time.monotonic() < until:
            tally.requests += 1
            try:
                nxt = await client.get("/api/assignments/next", params={"batch": BATCH})
            except httpx.HTTPError as e:
                note(tally, type(e).__name__)
                continue
            if nxt.status_code == 404:
                return  # nothing left for this labeler
            if nxt.status_code != 200:
                note(tally, f"http {nxt.status_code}")
                continue
            a = nxt.json()
            k = len(a["responses"])
            body = {"ranking": [[i] for i in range(k)], "likert": [4] * k, "time_spent_s": 1.0}
            key = str(uuid.uuid4())
            n += 1
            sends = 1 if n % retry_every else 2  # a double click: two identical requests at once
            responses = await asyncio.gather(*(post(a["id"], body, key) for _ in range(sends)))
            if sends == 2:
                responses.append(await post(a["id"], body, key))  # and a retry after the fact
            ids = set()
            for r in responses:
                if r is not None and r.status_code in (200, 201):
                    ids.add(r.json()["id"])
                    tally.replays += r.status_code == 200
            if len(ids) > 1:
                tally.mismatched += 1
            for label_id in ids:
                tally.accepted[label_id] = a["id"]


def count_stored(db_url: str, accepted: dict[int, int]) -> dict[str, int]:
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        rows = s.execute(
            select(Label.id, Label.assignment_id).join(Assignment).join(Item).join(Item.batch)
            .where(Item.batch.has(name=BATCH))
        ).all()
        dup_assign = s.scalar(
            select(func.count()).select_from(
                select(Label.assignment_id).group_by(Label.assignment_id).having(func.count() > 1).subquery()
            )
        )
    engine.dispose()
    stored = {label_id: aid for label_id, aid in rows}
    lost = sum(1 for label_id, aid in accepted.items() if stored.get(label_id) != aid)
    return {"stored": len(stored), "lost": lost, "duplicates": dup_assign or 0,
            "unacknowledged": len(set(stored) - set(accepted))}


def run_load(
    db_url: str | None = None, labelers: int = 50, seconds: float = 30.0, items: int | None = None,
    overlap: int = 3, retry_every: int = 5, workdir: Path | None = None,
) -> dict[str, float]:
    """Run the load test and return its figures (see the module docstring)."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="tiller-load-"))
    db_url = db_url or f"sqlite:///{workdir / 'load.db'}"
    overlap = min(overlap, labelers)
    items = items or max(100, int(labelers * seconds * 8 / overlap))  # more than the server can take
    tokens = setup(db_url, labelers, items, overlap)
    port = free_port()
    server = start_server(db_url, port, workdir / "server.log")
    tally = Tally()
    try:
        start = time.monotonic()

        async def main() -> None:
            until = time.monotonic() + seconds
            base = f"http://127.0.0.1:{port}"
            await asyncio.gather(*(labeler(base, t, until, retry_every, tally) for t in tokens))

        asyncio.run(main())
        elapsed = time.monotonic() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
    figures: dict[str, float] = {"labelers": labelers, "seconds": round(elapsed, 1),
                                 "accepted": len(tally.accepted), **count_stored(db_url, tally.accepted)}
    figures["duplicates"] += tally.mismatched
    figures.update(requests=tally.requests, errors=tally.errors, replays=tally.replays,
                   requests_per_s=round(tally.requests / elapsed, 1),
                   labels_per_s=round(len(tally.accepted) / elapsed, 1))
    if tally.error_kinds:
        figures["error_kinds"] = tally.error_kinds  # type: ignore[assignment]
        figures["server_log_tail"] = (workdir / "server.log").read_text()[-3000:]  # type: ignore[assignment]
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    p.add_argument("--labelers", type=int, default=50)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--items", type=int, default=None)
    p.add_argument("--overlap", type=int, default=3)
    p.add_argument("--retry-every", type=int, default=5)
    args = p.parse_args()
    f = run_load(args.db, args.labelers, args.seconds, args.items, args.overlap, args.retry_every)
    print(" ".join(f"{k}={v}" for k, v in f.items() if k != "server_log_tail"))
    if f.get("server_log_tail"):
        print(f["server_log_tail"], file=sys.stderr)
    print(f"accepted={f['accepted']} stored={f['stored']} duplicates={f['duplicates']} lost={f['lost']} "
          f"requests/s={f['requests_per_s']}")
    sys.exit(1 if f["lost"] or f["duplicates"] else 0)


if __name__ == "__main__":
    main()
