"""People as the comparison source: clip pairs go to the labeling app as batches, answers come back whenever.

Christiano et al. 2017 sec. 2.1: the policy, the predictor and the people run asynchronously; the loop asks
and goes on, and takes whatever answers have arrived at its next fit. ``ask`` renders the pairs' clips,
imports them as clip batches (``PREFIX-N``, ``chunk`` pairs each) and returns; ``collect`` returns each
answer once, as a :class:`Comparison` of the very segments that were asked about (kept here, and in
:meth:`state_dict`, so a restarted run maps answers given while it was down). "Can't tell" answers are recorded in the app but
never returned: they carry no preference to learn from.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from tiller.data.formats import DataError, check_name
from tiller.feedback.db import init_db, make_engine, session_factory
from tiller.feedback.models import Assignment, Batch, Item, Label
from tiller.feedback.records import CLIP_SUFFIX, parse_lines
from tiller.feedback.services.batches import import_batch
from tiller.feedback.services.export import CLIP_MU

from .config import AppSourceConfig
from .predictor import Comparison
from .render import render_clip
from .segments import Segment

DEFAULT_TASK = "Which clip shows the better behaviour?"
STATE_VERSION = 1


def clip_id(prefix: str, seg: Segment) -> str:
    """The clip's file stem: ``PREFIX.SEGMENT_ID`` when that passes the app's name rule, else a hash of it
    (the same segment always gets the same id, so it is rendered once)."""
    name = f"{prefix}.{seg.id}"
    try:
        return check_name(name)
    except DataError:
        return f"{prefix}.seg-{hashlib.sha256(seg.id.encode()).hexdigest()[:24]}"


class AppComparisonSource:
    """The loop's source of comparisons when people answer in the app (``source: app``).

    ``db_url``: the app's database (with its labelers); ``clips_dir``: the folder the app serves clips from
    (``tiller app serve --clips-dir``); ``overlap``: labelers per pair (each answer is one comparison);
    ``task``: the question above the clips; ``labelers``: who gets the batches (default: every labeler);
    ``fps`` and ``size``: the videos' (default fps: the env's real time); ``chunk``: pairs per batch;
    ``env_kwargs``: the task's ``gym.make`` keywords, so the clips show the body the policy acted in."""

    def __init__(
        self, db_url: str, clips_dir: Path, batch_prefix: str, env_id: str, overlap: int = 1,
        task: str = DEFAULT_TASK, labelers: list[str] | None = None, fps: int | None = None, size: int = 256,
        chunk: int = 10, env_kwargs: dict[str, Any] | None = None,
    ):
        check_name(batch_prefix, "batch_prefix")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 pair per batch, not {chunk}")
        self.chunk, self.env_kwargs = chunk, env_kwargs
        self.db_url, self.clips_dir, self.prefix, self.env_id = db_url, Path(clips_dir), batch_prefix, env_id
        self.overlap, self.task, self.labelers, self.fps, self.size = overlap, task, labelers, fps, size
        self._segments: dict[str, Segment] = {}  # segment id -> segment, for every open batch
        self._batches: dict[str, dict[str, tuple[str, str]]] = {}  # open batch -> item id -> (a, b) segment ids
        self._collected: set[int] = set()  # label ids already returned, in open batches
        self._next = 1
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    # --- the source interface ------------------------------------------------------------------------

    def ask(self, pairs: list[tuple[Segment, Segment]]) -> None:
        """Render the pairs' clips and import them as new batches of ``chunk`` pairs each; does not wait for
        any answer. Rendering is the slow part (software GL: ~2 s a clip, so the run's first 175 pairs take
        ~12 min): batch by batch, people start on the first pairs within a minute while the rest render."""
        for i in range(0, len(pairs), self.chunk):
            self._ask_batch(pairs[i:i + self.chunk])

    def _ask_batch(self, pairs: list[tuple[Segment, Segment]]) -> None:
        if not pairs:
            return
        # 1. clips: each segment once (a segment may be in several pairs), a on the left, b on the right
        segs = {s.id: s for pair in pairs for s in pair}
        for seg in segs.values():
            if seg.states is None:
                raise ValueError(f"segment {seg.id!r} has no MuJoCo states: it cannot be shown as a clip")
            out = self.clips_dir / f"{clip_id(self.prefix, seg)}{CLIP_SUFFIX}"
            if seg.id not in self._segments or not out.is_file():
                render_clip(self.env_id, seg.states, out, fps=self.fps, size=self.size, env_kwargs=self.env_kwargs)
        # 2. the batch, validated as `tiller app import-batch --kind clip` validates a file
        lines = [json.dumps({"id": str(i), "a": clip_id(self.prefix, a), "b": clip_id(self.prefix, b),
                             "task": self.task}) for i, (a, b) in enumerate(pairs)]
        with self._session() as session:
            name = self._free_name(session)
            items = parse_lines("\n".join(lines), "clip", source=name, clips_dir=self.clips_dir)
            import_batch(session, name, "clip", self.overlap, items, self.labelers)
        # 3. remember what was asked, to map the answers back
        self._segments.update(segs)
        self._batches[name] = {str(i): (a.id, b.id) for i, (a, b) in enumerate(pairs)}

    def collect(self) -> list[Comparison]:
        """Comparisons answered since the last collect, each exactly once, in the order they were stored."""
        if not self._batches:
            return []
        q = (
            select(Label.id, Label.choice, Item.external_id, Batch.name)
            .join(Assignment, Assignment.id == Label.assignment_id)
            .join(Item, Item.id == Assignment.item_id)
            .join(Batch, Batch.id == Item.batch_id)
            .where(Batch.name.in_(list(self._batches)), Assignment.status == "done")
            .order_by(Label.id)
        )
        with self._session() as session:
            # Pending counts first: a batch with none left can get no new label, so the labels read after
            # them are all it will ever have (read the other way round, on PostgreSQL's read-committed, a
            # label stored in between would be missed and its batch forgotten).
            pending = dict(session.execute(
                select(Batch.name, func.count())
                .join(Item, Item.batch_id == Batch.id)
                .join(Assignment, Assignment.item_id == Item.id)
                .where(Batch.name.in_(list(self._batches)), Assignment.status == "pending")
                .group_by(Batch.name)).all())
            rows = list(session.execute(q))
        out = []
        for label_id, choice, item_id, batch in rows:
            if label_id in self._collected:
                continue
            self._collected.add(label_id)
            if choice in CLIP_MU:  # "cant_tell" is recorded in the app, never learned from
                a, b = self._batches[batch][item_id]
                out.append(Comparison(a=self._segments[a], b=self._segments[b], mu=CLIP_MU[choice]))
        self._forget_settled(pending, rows)
        return out

    def pending(self) -> int:
        """Assignments of this source's open batches that nobody has answered or skipped yet."""
        if not self._batches:
            return 0
        q = (select(func.count()).select_from(Assignment).join(Item, Item.id == Assignment.item_id)
             .join(Batch, Batch.id == Item.batch_id)
             .where(Batch.name.in_(list(self._batches)), Assignment.status == "pending"))
        with self._session() as session:
            return int(session.scalar(q) or 0)

    # --- restart ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat numpy arrays (``np.savez(path, **src.state_dict())``, no pickles): the open batches, the
        labels already returned and the segments the open batches show."""
        out: dict[str, np.ndarray] = {
            "version": np.array(STATE_VERSION, dtype=np.int64),
            "prefix": np.array(self.prefix),
            "next": np.array(self._next, dtype=np.int64),
            "batches": np.array(json.dumps({k: {i: list(p) for i, p in v.items()} for k, v in self._batches.items()})),
            "collected": np.array(sorted(self._collected), dtype=np.int64),
            "count": np.array(len(self._segments), dtype=np.int64),
        }
        for i, seg in enumerate(self._segments.values()):
            for k, v in seg.to_npz_dict().items():
                out[f"seg{i}/{k}"] = v
        return out

    def load_state_dict(self, d: Any) -> None:
        """Inverse of :meth:`state_dict`; ``d`` may be a dict or an ``np.load`` result."""
        if int(d["version"]) != STATE_VERSION:
            raise ValueError(f"app source state version {int(d['version'])}, expected {STATE_VERSION}")
        if str(d["prefix"]) != self.prefix:
            raise ValueError(f"app source state is for batches {str(d['prefix'])!r}-N, not {self.prefix!r}-N")
        self._next = int(d["next"])
        self._batches = {k: {i: (p[0], p[1]) for i, p in v.items()} for k, v in json.loads(str(d["batches"])).items()}
        self._collected = {int(x) for x in np.asarray(d["collected"]).reshape(-1)}
        segs = []
        for i in range(int(d["count"])):
            prefix = f"seg{i}/"
            segs.append(Segment.from_npz_dict({k[len(prefix):]: d[k] for k in d if k.startswith(prefix)}))
        self._segments = {s.id: s for s in segs}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = self._sessions = None

    # --- helpers -----------------------------------------------------------------------------------------

    def _session(self) -> Session:
        if self._sessions is None:
            init_db(self.db_url)  # the app may not have run yet: the same migrations it would run
            self._engine = make_engine(self.db_url)
            self._sessions = session_factory(self._engine)
        return self._sessions()

    def _free_name(self, session: Session) -> str:
        """``PREFIX-N`` for the first N not taken: a batch asked after the last saved state (then a crash)
        keeps its name, and its answers, which nobody here can map, stay in the app."""
        while session.scalar(select(Batch.id).where(Batch.name == f"{self.prefix}-{self._next}")) is not None:
            self._next += 1
        name = f"{self.prefix}-{self._next}"
        self._next += 1
        return name

    def _forget_settled(self, pending: dict[str, int], rows: list[Any]) -> None:
        """Drop batches with nothing pending (every answer now returned) and the segments only they showed,
        so the state holds open work only."""
        settled = [name for name in self._batches if not pending.get(name)]
        if not settled:
            return
        done_labels = {row[0] for row in rows if row[3] in settled}
        self._collected -= done_labels
        for name in settled:
            del self._batches[name]
        still = Counter(s for items in self._batches.values() for pair in items.values() for s in pair)
        self._segments = {k: v for k, v in self._segments.items() if still[k]}


class AppSource:
    """``source: app`` for the training loop: :class:`AppComparisonSource` set up from the run's
    ``AppSourceConfig``, with a state the loop keeps in its JSON loop state (the source's numpy arrays as one
    ``np.savez`` archive, base64-encoded: saved and restored with the loop's comparisons, never a pickle)."""

    def __init__(self, cfg: AppSourceConfig, batch_prefix: str, clips_dir: Path, env_id: str,
                 env_kwargs: dict[str, Any] | None = None):
        self.source = AppComparisonSource(cfg.db, Path(clips_dir), batch_prefix, env_id, overlap=cfg.overlap,
                                          task=cfg.task.strip() or DEFAULT_TASK, fps=cfg.fps, size=cfg.size,
                                          chunk=cfg.chunk, env_kwargs=env_kwargs)

    def ask(self, pairs: list[tuple[Segment, Segment]]) -> None:
        self.source.ask(pairs)

    def collect(self) -> list[Comparison]:
        return self.source.collect()

    def pending(self) -> int:
        return self.source.pending()

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"npz": base64 of np.savez(source.state_dict())}``."""
        buf = io.BytesIO()
        np.savez(buf, **self.source.state_dict())  # type: ignore[arg-type]
        return {"npz": base64.b64encode(buf.getvalue()).decode("ascii")}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        with np.load(io.BytesIO(base64.b64decode(d["npz"])), allow_pickle=False) as data:
            self.source.load_state_dict(data)

    def close(self) -> None:
        self.source.close()
