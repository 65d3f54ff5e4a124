"""Where a run stands (issue #14): ``tiller status --run NAME`` and the app's /admin/runs page.

`tiller run` rewrites ``RUN/status.json`` at every stage (:func:`write_status`): the stage, ``running`` /
``waiting`` / ``done`` / ``failed``, the round, its pid and host, and while a round waits for people the
batch and database it waits on. :func:`run_status` reads it together with ``run-config.json``, the stage
outputs present and, for a waiting round, the app's database: rankings done and needed, per labeler, the
agreement so far and whether the round's rule lets it go on. A status whose process is gone reads "stopped".

The round's rule (``label.min_done``, ``label.min_agreement``; :func:`check_rule`) is decided here so that
`tiller label` enforces exactly what `tiller status` reports.

* ``min_done``: the share of the batch's assignments that must be *done* (ranked) before the round may go
  on early; the assignments still pending are then closed. Skipped ones are settled but not done: they
  never bring the early start nearer, and they never block the end either: a batch whose every assignment
  is settled goes on with what was ranked, whatever the share (labelers may skip what they cannot judge,
  as InstructGPT's could). So the default 1.0 means "wait until every assignment is done or skipped".
* ``min_agreement``: the pairwise agreement between labelers (``tiller.data.agreement``, ties left out),
  checked only for batches with overlap > 1 once ``MIN_SHARED_ITEMS`` items have two or more rankings; fewer
  measure nothing. Below it, the round waits while assignments are pending (more rankings may change it) and
  fails once all are settled. A batch that never gets enough shared items goes on unchecked, and says so.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiller.runs import atomic_write_text, read_manifest

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from tiller.feedback.services.batches import BatchProgress

STATUS_FILE = "status.json"
STATES = ("running", "waiting", "done", "failed")
MIN_SHARED_ITEMS = 5  # items ranked by two or more labelers before their agreement is held against a batch


def write_status(rd: Path, stage: str, state: str = "running", round: int | None = None, **extra: Any) -> None:
    """Atomically replace ``rd/status.json``; ``extra`` (e.g. ``batch``, ``db``, ``error``) is kept as given."""
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
    status = {"stage": stage, "state": state, "round": round, "updated": datetime.now(UTC).isoformat(timespec="seconds"),
              "pid": os.getpid(), "host": socket.gethostname(), **extra}
    atomic_write_text(Path(rd) / STATUS_FILE, json.dumps(status, indent=2, default=str))


def read_status(rd: Path) -> dict[str, Any] | None:
    path = Path(rd) / STATUS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):  # none yet, or a hand-edited file
        return None
    return data if isinstance(data, dict) else None


def mark_failed(rd: Path, error: str) -> None:
    """The run stopped on ``error``: keep the stage, round and batch it was at, so the status still says where."""
    old = read_status(rd) or {}
    keep = {k: v for k, v in old.items() if k not in ("stage", "state", "round", "updated", "pid", "host", "error")}
    write_status(rd, old.get("stage") or "unknown", state="failed", round=old.get("round"), **keep, error=error)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


# ---------------------------------------------------------------------------------------------- the rule


@dataclass
class RuleCheck:
    """What a round's rule says about its batch now: ``go`` (export what is done), ``wait`` or ``fail``."""

    verdict: str
    met: bool
    done: int
    needed: int  # done assignments that let the round go on before every one is settled
    more: int  # rankings still to come before it may go on (0 unless waiting)
    pending: int
    total: int
    agreement: float | None
    compared: int  # answer pairs both labelers ordered
    shared_items: int  # items with two or more rankings
    agreement_checked: bool
    min_done: float
    min_agreement: float
    reason: str


def check_rule(counts: Mapping[str, int], overlap: int, agreement: float | None, compared: int, shared_items: int,
               min_done: float = 1.0, min_agreement: float = 0.0) -> RuleCheck:
    """The round's rule (module docstring) on a batch's assignment counts by status and its agreement so far."""
    total, done, pending = sum(counts.values()), counts.get("done", 0), counts.get("pending", 0)
    needed = math.ceil(min_done * total - 1e-9)
    gated = min_agreement > 0 and overlap > 1
    checkable = gated and agreement is not None and shared_items >= MIN_SHARED_ITEMS
    low = checkable and agreement is not None and agreement < min_agreement
    shown = f"{agreement:.1%}" if agreement is not None else "n/a"
    settled = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "skipped", "closed") if counts.get(s, 0))

    def result(verdict: str, more: int, reason: str) -> RuleCheck:
        return RuleCheck(verdict, verdict == "go", done, needed, more, pending, total, agreement, compared,
                         shared_items, checkable, min_done, min_agreement, reason)

    if low:
        why = f"agreement {shown} over {compared} pairs is below min_agreement {min_agreement:g}"
        return result("fail", 0, why) if pending == 0 else result("wait", pending, why + " so far")
    unchecked = "" if checkable or not gated else (
        f"; agreement not checked: {shared_items} items with two or more rankings, {MIN_SHARED_ITEMS} needed")
    if pending == 0:
        return result("go", 0, f"every assignment is settled ({settled or 'none'}){unchecked}")
    if done >= needed and (checkable or not gated):
        return result("go", 0, f"{done} of {total} assignments done, min_done {min_done:g} reached")
    if done >= needed:
        return result("wait", pending, f"{done} of {total} done, but agreement is not measurable yet{unchecked}")
    return result("wait", min(pending, needed - done), f"{done} of {total} assignments done, {needed} needed "
                                                        f"(min_done {min_done:g})")


def shared_items(session: Session, batch_id: int) -> int:
    """Items of the batch that two or more labelers ranked."""
    from sqlalchemy import func, select

    from tiller.feedback.models import Assignment, Item

    q = (select(Assignment.item_id).join(Item, Item.id == Assignment.item_id)
         .where(Item.batch_id == batch_id, Assignment.status == "done")
         .group_by(Assignment.item_id).having(func.count() >= 2))
    return session.scalar(select(func.count()).select_from(q.subquery())) or 0


def batch_rule(session: Session, progress: BatchProgress, min_done: float = 1.0,
               min_agreement: float = 0.0) -> RuleCheck:
    """:func:`check_rule` on a batch's progress (computed ``with_agreement``)."""
    report = progress.agreement
    return check_rule(progress.counts, progress.batch.overlap, report.agreement if report else None,
                      report.compared if report else 0, shared_items(session, progress.batch.id), min_done,
                      min_agreement)


def agreement_failure(batch: str, db: str, check: RuleCheck) -> str:
    """One line: why the round stopped, and the three ways on."""
    shown = "n/a" if check.agreement is None else f"{check.agreement:.1%}"
    return (f"labelers of batch {batch!r} ({public_url(db)}) agree on {shown} of {check.compared} answer pairs over "
            f"{check.shared_items} shared items, below label.min_agreement {check.min_agreement:g}; review the batch "
            f"in the app's admin page (/admin/batches/{batch}), rank it again in a new batch with more labelers or "
            "overlap (label.batch=NEW label.overlap=N), or lower label.min_agreement and rerun (the batch is kept "
            "and checked again, not imported again)")


def public_url(db: str) -> str:
    """A database URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(db).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  # not a URL sqlalchemy reads (or no sqlalchemy): show it as given
        return db


# ------------------------------------------------------------------------------------------------ batches


@dataclass
class LabelerProgress:
    name: str
    done: int = 0
    pending: int = 0
    skipped: int = 0
    closed: int = 0
    agreement: float | None = None  # with the other labelers of the same items


@dataclass
class BatchStatus:
    """A batch in the app's database as a run waiting on it sees it; ``error`` when it cannot be read."""

    name: str
    db: str  # without its password
    kind: str = ""
    items: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    labelers: list[LabelerProgress] = field(default_factory=list)
    rule: RuleCheck | None = None
    error: str | None = None


def batch_status(db: str, name: str, min_done: float = 1.0, min_agreement: float = 0.0) -> BatchStatus:
    """The live progress of batch ``name`` in database ``db``, read only (never migrated or created)."""
    out = BatchStatus(name, public_url(db))
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import SQLAlchemyError

        from tiller.feedback.db import make_engine, session_factory
        from tiller.feedback.errors import NotFound
        from tiller.feedback.services.batches import batch_progress
    except ImportError:
        out.error = "the app extra is not installed (pip install -e '.[app]')"
        return out
    try:
        url = make_url(db)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
                and not Path(url.database).is_file():
            out.error = "no such database file"
            return out
        engine = make_engine(db)
    except Exception as e:  # noqa: BLE001  # a bad URL or a missing driver, shown on the status
        out.error = f"cannot open the database: {e}"
        return out
    try:
        with session_factory(engine)() as session:
            progress = batch_progress(session, name)
            out.kind, out.items, out.counts = progress.batch.kind, progress.items, dict(progress.counts)
            report = progress.agreement
            for who, c in sorted(progress.per_labeler.items()):
                out.labelers.append(LabelerProgress(who, c.get("done", 0), c.get("pending", 0), c.get("skipped", 0),
                                                    c.get("closed", 0), report.labeler_agreement(who) if report else None))
            rule = (min_done, min_agreement) if progress.batch.kind == "rank" else (1.0, 0.0)
            out.rule = batch_rule(session, progress, *rule)
    except NotFound:
        out.error = "no such batch (yet)"
    except SQLAlchemyError as e:
        out.error = f"cannot read the database: {str(getattr(e, 'orig', e) or e).strip().splitlines()[0]}"
    finally:
        engine.dispose()
    return out


# --------------------------------------------------------------------------------------------------- runs

ARMS = (("ppo-noptx", "ppo-noptx-r1", "policy-noptx-r1"), ("bon", "bon-r1", "bon-r1"), ("dpo", "dpo-r1", "policy-dpo-r1"))


@dataclass
class StageState:
    name: str  # as `tiller run` prints it: world, pretrain, sft, sample-r1, label-r1, rm-r1, ppo-r1, ..., eval
    output: str  # relative to the run folder
    done: bool  # its output is finished (a changed config may still redo it)


def plan(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(stage, output) in the order `tiller run` goes through them for ``cfg``, the run's run-config.json."""
    stages: list[tuple[str, str]] = []
    if cfg.get("data", {}).get("source", "world") == "project":
        stages.append(("data", "data/project/snapshot"))
    else:
        stages.append(("world", "world/manifest.json"))
        if not cfg.get("base_model"):
            stages.append(("pretrain", "base"))
    stages.append(("sft", "sft"))
    rule_rm = bool(cfg.get("rule_rm_flags")) and not cfg.get("ppo", {}).get("rewards")
    for r in range(1, int(cfg.get("rounds", 1)) + 1):
        stages += [(f"sample-r{r}", f"data/samples-r{r}.manifest"), (f"label-r{r}", f"data/rankings-r{r}.manifest"),
                   (f"rm-r{r}", f"rm-r{r}")]
        if rule_rm:
            stages.append((f"rm-harmless-r{r}", f"rm-harmless-r{r}"))
        stages.append((f"ppo-r{r}", f"policy-r{r}"))
        if r == 1:
            stages += [(name, out) for arm, name, out in ARMS if arm in cfg.get("arms", [])]
    return [*stages, ("eval", "report/results.json"), ("report", "report/report.html")]


def _finished(rd: Path, output: str) -> bool:
    path = rd / output
    if path.suffix in (".json", ".html"):
        return path.is_file()
    manifest = read_manifest(path) if path.is_dir() else None
    return manifest is not None and manifest.get("status") == "done"


def round_of(stage: str | None) -> int | None:
    head, _, tail = (stage or "").rpartition("-r")
    return int(tail) if head and tail.isdigit() else None


@dataclass
class RunStatus:
    """Where a run stands; ``state`` is one of not started, running, waiting, done, failed, stopped."""

    run: str
    state: str = "not started"
    stage: str | None = None
    round: int | None = None
    rounds: int = 0
    labeler: str = ""
    updated: str | None = None
    pid: int | None = None
    host: str | None = None
    error: str | None = None
    stages: list[StageState] = field(default_factory=list)
    batch: BatchStatus | None = None
    next: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_status(rd: Path) -> RunStatus:
    """The status of run folder ``rd`` (module docstring); reads the app's database only for a batch it waits on."""
    rd = Path(rd)
    try:
        cfg = json.loads((rd / "run-config.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        cfg = {}
    label = cfg.get("label", {})
    st = RunStatus(str(rd), rounds=int(cfg.get("rounds", 0)), labeler=str(label.get("labeler", "")),
                   stages=[StageState(n, o, _finished(rd, o)) for n, o in plan(cfg)] if cfg else [])
    status = read_status(rd)
    todo = [s for s in st.stages if not s.done]
    if status is not None:
        st.stage, st.state, st.round = status.get("stage"), str(status.get("state", "running")), status.get("round")
        st.updated, st.pid, st.host, st.error = status.get("updated"), status.get("pid"), status.get("host"), status.get("error")
        local = st.host in (None, socket.gethostname())  # another machine's pid cannot be checked from here
        if st.state in ("running", "waiting") and isinstance(st.pid, int) and local and not _alive(st.pid):
            st.state = "stopped"
        if st.stage not in {s.name for s in st.stages} and todo:  # a status that lost its stage: the first not done
            st.stage, st.round = todo[0].name, round_of(todo[0].name)
        if status.get("batch") and status.get("db") and st.state != "done":
            rule = (float(label.get("min_done", 1.0)), float(label.get("min_agreement", 0.0)))
            st.batch = batch_status(str(status["db"]), str(status["batch"]),
                                    *(rule if (st.stage or "").startswith("label-") else (1.0, 0.0)))
    elif st.stages and not todo:
        st.state, st.stage = "done", st.stages[-1].name
    elif st.stages and len(todo) < len(st.stages):  # work done before status.json existed
        st.state, st.stage, st.round = "stopped", todo[0].name, round_of(todo[0].name)
    st.next = _next(st, rd)
    return st


def _next(st: RunStatus, rd: Path) -> str:
    """One sentence: what comes next, or what the user can do."""
    resume = f"tiller run --run {rd} --config {rd / 'run-config.json'}"
    names = [s.name for s in st.stages]
    after = names[names.index(st.stage) + 1] if st.stage in names[:-1] else None
    then = f"; then {after}" if after else ""
    b = st.batch
    if st.state == "not started":
        return f"not started: `tiller run --run {rd}`"
    if st.state == "done":
        return f"finished: the report is {rd / 'report' / 'report.html'}"
    if st.state == "failed":
        return f"failed at {st.stage}: {st.error or 'no error recorded'}; rerun `{resume}` to go on once that is fixed"
    if st.state == "stopped":
        return f"stopped at {st.stage} (rerun `{resume}` to resume)"
    if st.state != "waiting" or b is None:
        return f"{st.state} {st.stage}{then}"
    if b.error or b.rule is None:
        return f"waiting on batch {b.name} ({b.db}): {b.error}{then}"
    rule, noun = b.rule, {"rank": "rankings", "demo": "demonstrations"}.get(b.kind, "labels")
    if rule.verdict == "wait":
        low = rule.agreement_checked and rule.agreement is not None and rule.agreement < rule.min_agreement
        why = f" ({rule.reason})" if low or rule.done >= rule.needed else ""  # agreement matters, not just numbers
        return f"waiting for {rule.more} more {noun} in batch {b.name} (tiller app){why}{then}"
    if rule.verdict == "go":
        return f"batch {b.name} may go on ({rule.reason}): the run takes it at its next check{then}"
    return f"batch {b.name} is settled but {rule.reason}: the run stops at its next check"


def format_status(st: RunStatus) -> str:
    """A few lines for a terminal: state, stages by round, the batch waited on per labeler, what next."""
    rows = [("run", f"{st.run}" + (f": labeler {st.labeler}, {st.rounds} rounds" if st.labeler else ""))]
    where = f" at {st.stage}" if st.stage else ""
    where += f" (round {st.round} of {st.rounds})" if st.round else ""
    when = f", updated {st.updated}" + (f" by pid {st.pid}" if st.pid else "") if st.updated else ""
    rows.append(("state", f"{st.state}{where}{when}"))

    def mark(s: StageState) -> str:
        short = s.name if round_of(s.name) is None else s.name.rpartition("-r")[0]
        return f"{short} {'done' if s.done else st.state if s.name == st.stage else '-'}"

    groups: dict[str, list[str]] = {}
    for s in st.stages:
        r = round_of(s.name)
        key = f"round {r}" if r else ("setup" if s.name in ("world", "pretrain", "data", "sft") else "end")
        groups.setdefault(key, []).append(mark(s))
    rows += [(k, " . ".join(v)) for k, v in groups.items()]
    lines = [f"{k:<10} {v}" for k, v in rows]
    if st.batch is not None:
        lines += _format_batch(st.batch)
    lines.append(f"{'next':<10} {st.next}")
    return "\n".join(lines)


def _format_batch(b: BatchStatus) -> list[str]:
    if b.error or b.rule is None:
        return [f"{'batch':<10} {b.name} in {b.db}: {b.error}"]
    r = b.rule
    c = b.counts
    lines = [f"{'batch':<10} {b.name} in {b.db}: {r.done} of {r.total} done, {r.needed} needed (min_done {r.min_done:g}), "
             f"{c.get('pending', 0)} pending, {c.get('skipped', 0)} skipped, {c.get('closed', 0)} closed",
             f"{'':<10} {'labeler':<16} {'done':>6} {'pending':>8} {'skipped':>8} {'closed':>7}  agreement"]
    for p in b.labelers:
        agree = "-" if p.agreement is None else f"{p.agreement:.1%}"
        lines.append(f"{'':<10} {p.name:<16} {p.done:>6} {p.pending:>8} {p.skipped:>8} {p.closed:>7}  {agree}")
    agree = "-" if r.agreement is None else f"{r.agreement:.1%}"
    lines.append(f"{'agreement':<10} {agree} over {r.compared} pairs, {r.shared_items} items ranked twice or more "
                 f"(min_agreement {r.min_agreement:g}); rule: {r.verdict}: {r.reason}")
    return lines
