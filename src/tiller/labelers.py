"""Where rankings come from: the embedded world's simulated labelers, people in the web app, or a reward
model (AI feedback). All three write the same rankings file, so the stages after never know which."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tiller.config import ConfigError, field
from tiller.data import Ranking, SampleSet, read_records, write_jsonl


@dataclass
class LabelConfig:
    labeler: Literal["world", "app", "rm"] = field("world", help="simulated labelers | people in `tiller app` | a reward model")
    overlap: int = field(1, help="labelers per item (several records per prompt when > 1)")
    world: str = field("", help="world folder (labeler=world)")
    db: str = field("sqlite:///feedback.db", help="database of the web app (labeler=app)")
    batch: str = field("", help="batch name in the web app (labeler=app; default: the samples file's name)")
    rm: str = field("", help="reward model folder (labeler=rm)")
    timeout_s: float = field(0.0, help="labeler=app: give up after this long (0: wait forever)")
    poll_s: float = field(5.0, help="labeler=app: seconds between checks of the database")
    seed: int = field(0, help="random seed (which labelers, their noise)")

    def validate(self) -> None:
        if self.overlap < 1:
            raise ConfigError("overlap must be >= 1")
        if self.timeout_s < 0 or self.poll_s <= 0:
            raise ConfigError("timeout_s must be >= 0 and poll_s > 0")


def label_world(sets: list[SampleSet], world_dir: str, overlap: int, seed: int) -> list[Ranking]:
    from tiller.world import load_world  # only this labeler may see the world

    world = load_world(Path(world_dir))
    pool = world.labelers
    if overlap > len(pool):
        raise ConfigError(f"overlap {overlap} exceeds the {len(pool)} simulated labelers")
    rng = random.Random(seed)
    out = []
    for s in sets:
        for who in rng.sample(range(len(pool)), overlap):
            r = pool.rank(s.prompt, s.responses, who, rng)
            out.append(Ranking(s.prompt, s.responses, r["ranking"], pool.names[who], r.get("likert"), r.get("flags"), s.id))
    return out


def label_rm(sets: list[SampleSet], rm_path: str) -> list[Ranking]:
    """AI feedback: rank by a reward model's scores (higher first; equal scores tie)."""
    from tiller.scoring import RewardScorer

    scorer = RewardScorer(rm_path)
    out = []
    for s in sets:
        scores = scorer.score([s.prompt] * len(s.responses), s.responses)
        groups: dict[float, list[int]] = {}
        for i, sc in enumerate(scores):
            groups.setdefault(round(sc, 6), []).append(i)
        out.append(Ranking(s.prompt, s.responses, [groups[k] for k in sorted(groups, reverse=True)], f"rm:{rm_path}", id=s.id))
    return out


def label_app(cfg: LabelConfig, samples: Path, out: Path) -> list[Ranking]:
    """People rank in ``tiller app``: import the samples as a batch (once), wait until every assignment is
    done or skipped, then export the rankings."""
    from tiller.feedback.db import init_db, make_engine, session_factory
    from tiller.feedback.errors import NotFound, ServiceError
    from tiller.feedback.records import RecordError, parse_lines
    from tiller.feedback.services.batches import get_batch, import_batch
    from tiller.feedback.services.export import wait_and_export

    name = cfg.batch or samples.stem
    init_db(cfg.db)
    engine = make_engine(cfg.db)
    try:
        with session_factory(engine)() as session:
            try:
                batch = get_batch(session, name)
                if batch.kind != "rank":
                    raise ConfigError(f"batch {name!r} in {cfg.db} is a {batch.kind} batch, not a ranking one")
            except NotFound:
                # The app's own errors (no labelers yet, overlap above their number, a record it refuses)
                # become one-line config errors, which `tiller label` reports without a traceback.
                try:
                    items = parse_lines(samples.read_text(encoding="utf-8"), "rank", source=str(samples),
                                        allow_empty=True)  # model samples may be empty answers
                    import_batch(session, name, "rank", cfg.overlap, items)
                except (ServiceError, RecordError) as e:
                    raise ConfigError(f"cannot import {samples} as batch {name!r}: {e}") from None
                print(f"imported {samples} as batch {name!r}; waiting for labelers at `tiller app` ...", flush=True)
    finally:
        engine.dispose()
    wait_and_export(cfg.db, name, out, poll_s=cfg.poll_s, timeout_s=cfg.timeout_s or None)
    return read_records(out, "ranking", allow_empty=True)


def label(cfg: LabelConfig, samples: Path, out: Path) -> dict:
    """Rank every sample set of ``samples`` into ``out`` (rankings JSONL)."""
    start = time.time()
    sets = read_records(samples, "sample", allow_empty=True)  # model samples may be empty answers
    if cfg.labeler == "world":
        if not cfg.world:
            raise ConfigError("labeler=world needs world=PATH (the folder `tiller world` wrote)")
        records = label_world(sets, cfg.world, cfg.overlap, cfg.seed)
    elif cfg.labeler == "rm":
        if not cfg.rm:
            raise ConfigError("labeler=rm needs rm=PATH")
        records = label_rm(sets, cfg.rm)
    else:
        records = label_app(cfg, samples, out)
    if cfg.labeler != "app":
        write_jsonl(out, records)
    return {"rankings": len(records), "sets": len(sets), "seconds": time.time() - start}
