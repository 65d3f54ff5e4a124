"""Where rankings come from: the embedded world's simulated labelers, people in the web app, or AI feedback
(a reward model, or a pairwise AI judge). All write the same rankings file, so the stages after never know
which."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tiller.config import ConfigError, field
from tiller.data import Ranking, SampleSet, read_records, write_jsonl
from tiller.status import MIN_SHARED_ITEMS, agreement_failure, batch_rule

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from tiller.feedback.services.batches import BatchProgress
    from tiller.judges import PairwiseJudge


@dataclass
class LabelConfig:
    labeler: Literal["world", "app", "rm", "judge"] = field(
        "world", help="simulated labelers | people in `tiller app` | a reward model | a pairwise AI judge (RLAIF)")
    overlap: int = field(1, help="labelers per item (several records per prompt when > 1)")
    world: str = field("", help="world folder (labeler=world)")
    db: str = field("sqlite:///feedback.db", help="database of the web app (labeler=app)")
    batch: str = field("", help="batch name in the web app (labeler=app; default: the samples file's name; in "
                                      "`tiller run` the prefix of each round's batch, -rN added, default RUN-samples)")
    rm: str = field("", help="reward model folder (labeler=rm)")
    timeout_s: float = field(0.0, help="labeler=app: give up after this long (0: wait forever)")
    poll_s: float = field(5.0, help="labeler=app: seconds between checks of the database")
    min_done: float = field(
        1.0, help="labeler=app: share of the batch's assignments that must be done before the round goes on (the "
                  "rest is then closed); skipped ones count as settled, not done, and a batch whose every assignment "
                  "is done or skipped goes on whatever the share")
    min_agreement: float = field(
        0.0, help="labeler=app with overlap > 1: stop with an error if labelers agree on fewer answer pairs than this "
                  f"(ties left out; checked once {MIN_SHARED_ITEMS} items have two or more rankings)")
    judge: str = field("", help="labeler=judge: openai:URL[:MODEL], any OpenAI-compatible server (`tiller serve` too)")
    judge_template: str = field("", help="labeler=judge: the judge's Jinja prompt ('': eval/templates/judge_pairwise.j2)")
    judge_timeout: float = field(60.0, help="labeler=judge: seconds the judge may take per question")
    seed: int = field(0, help="random seed (which labelers, their noise)")

    def validate(self) -> None:
        if self.overlap < 1:
            raise ConfigError("overlap must be >= 1")
        if self.timeout_s < 0 or self.poll_s <= 0:
            raise ConfigError("timeout_s must be >= 0 and poll_s > 0")
        if not 0 < self.min_done <= 1 or not 0 <= self.min_agreement <= 1:
            raise ConfigError("min_done must be in (0, 1] and min_agreement in [0, 1]")
        if self.judge_timeout <= 0:
            raise ConfigError("judge_timeout must be > 0")


class LabelRuleError(ConfigError):
    """A batch whose labels break the round's rule (``min_agreement``); one line saying how to go on."""


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


def label_app(cfg: LabelConfig, samples: Path, out: Path) -> tuple[list[Ranking], dict[str, Any]]:
    """People rank in ``tiller app``: import the samples as a batch (once: a rerun finds it and waits on it
    again), wait until the round's rule (``min_done``, ``min_agreement``: :mod:`tiller.status`) lets it go on,
    close what is still pending, then export the rankings."""
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
    metrics: dict[str, Any] = {}

    def ready(session: Session, progress: BatchProgress) -> bool:
        check = batch_rule(session, progress, cfg.min_done, cfg.min_agreement)
        if check.verdict == "fail":
            raise LabelRuleError(agreement_failure(name, cfg.db, check))
        if check.verdict == "go":
            closed = close_pending(session, progress.batch.id) if check.pending else 0
            print(f"batch {name!r}: {check.reason}" + (f"; closed the {closed} assignments still pending" if closed else ""),
                  flush=True)
            metrics.update({"app/done": check.done, "app/assignments": check.total, "app/closed": closed,
                            "app/skipped": progress.counts.get("skipped", 0)})
            if check.agreement is not None:
                metrics["data/labeler_agreement"] = check.agreement
        return check.met

    wait_and_export(cfg.db, name, out, poll_s=cfg.poll_s, timeout_s=cfg.timeout_s or None, ready=ready)
    return read_records(out, "ranking", allow_empty=True), metrics


def close_pending(session: Session, batch_id: int) -> int:
    """Close the batch's pending assignments (its round went on without them): they are then never handed
    out, shown as pending or exported. Returns how many."""
    from sqlalchemy import select, update

    from tiller.feedback.db import writing
    from tiller.feedback.models import Assignment, Item, utcnow

    with writing(session):
        result = session.execute(
            update(Assignment)
            .where(Assignment.status == "pending", Assignment.item_id.in_(select(Item.id).where(Item.batch_id == batch_id)))
            .values(status="closed", updated_at=utcnow())
        )
    return int(result.rowcount)  # type: ignore[attr-defined]


def copeland(k: int, outcomes: dict[tuple[int, int], float]) -> list[list[int]]:
    """K answers ranked by their pairwise results (``outcomes[(i, j)]``: 1 when i beat j, 0 when it lost, 0.5
    a tie): a win scores 1, a tie 0.5 (Copeland's rule), best first; equal totals tie in the ranking."""
    score = [0.0] * k
    for (i, j), o in outcomes.items():
        score[i] += o
        score[j] += 1.0 - o
    groups: dict[float, list[int]] = {}
    for i, sc in enumerate(score):
        groups.setdefault(sc, []).append(i)  # sums of halves: exact in floating point
    return [groups[sc] for sc in sorted(groups, reverse=True)]


def label_judge(cfg: LabelConfig, sets: list[SampleSet]) -> tuple[list[Ranking], dict[str, Any]]:
    """AI feedback from a pairwise judge (``cfg.judge``, as ``tiller eval --judge``): every pair of each set's
    answers asked in both orders, the K answers ranked by :func:`copeland`. A pair whose reply did not parse
    counts as a tie and is counted in the metrics; past half of the replies unparsable it is an error."""
    from tiller.judges import judge_pairs, make_judge

    if not cfg.judge or cfg.judge == "world":
        raise ConfigError("labeler=judge needs judge=openai:URL[:MODEL] (an OpenAI-compatible server)")
    judge: PairwiseJudge | None = make_judge(cfg.judge, template=cfg.judge_template or None, timeout=cfg.judge_timeout)
    assert judge is not None  # only "world" makes none
    pairs = [(n, i, j) for n, s in enumerate(sets) for i, j in combinations(range(len(s.responses)), 2)]
    report = judge_pairs(judge, [sets[n].prompt for n, _, _ in pairs], [sets[n].responses[i] for n, i, _ in pairs],
                         [sets[n].responses[j] for n, _, j in pairs])
    outcomes: list[dict[tuple[int, int], float]] = [{} for _ in sets]
    for (n, i, j), o in zip(pairs, report.outcomes, strict=True):
        outcomes[n][(i, j)] = 0.5 if o is None else o
    who = f"judge:{getattr(judge, 'model', None) or getattr(judge, 'url', judge.name)}"
    records = [Ranking(s.prompt, s.responses, copeland(len(s.responses), outcomes[n]), who, id=s.id)
               for n, s in enumerate(sets)]
    if report.n_left_out:
        print(f"{who}: {report.n_parse_failures} of {report.n_asked} replies were not A, B or tie; their "
              f"{report.n_left_out} pairs count as ties (e.g. {report.failure_examples[0]!r})", flush=True)
    return records, {"judge/pairs": len(pairs), "judge/questions": report.n_asked,
                     "judge/unparsable_replies": report.n_parse_failures, "judge/tied_unparsable_pairs": report.n_left_out}


def label(cfg: LabelConfig, samples: Path, out: Path) -> dict:
    """Rank every sample set of ``samples`` into ``out`` (rankings JSONL)."""
    start = time.time()
    sets = read_records(samples, "sample", allow_empty=True)  # model samples may be empty answers
    metrics: dict[str, Any] = {}
    if cfg.labeler == "world":
        if not cfg.world:
            raise ConfigError("labeler=world needs world=PATH (the folder `tiller world` wrote)")
        records = label_world(sets, cfg.world, cfg.overlap, cfg.seed)
    elif cfg.labeler == "rm":
        if not cfg.rm:
            raise ConfigError("labeler=rm needs rm=PATH")
        records = label_rm(sets, cfg.rm)
    elif cfg.labeler == "judge":
        records, metrics = label_judge(cfg, list(sets))
    else:
        records, metrics = label_app(cfg, samples, out)
    if cfg.labeler != "app":
        write_jsonl(out, records)
    return {"rankings": len(records), "sets": len(sets), **metrics, "seconds": time.time() - start}
