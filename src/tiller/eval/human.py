"""Evaluation by people (issue #14): policies' answers to held-out prompts ranked blind in ``tiller app``.

InstructGPT's headline result (section 4, figure 1) is the rate at which labelers prefer a policy's answer to a
baseline's on prompts from held-out users; figure 4 adds what labelers flagged per answer and their 1-7 Likert
scores. Here the answers of two or more policies to the same prompts become one ranking item per prompt, in a
shuffled order that differs per prompt, so labelers cannot tell who wrote what. The key (item -> the policy at
each position) is written to ``human-eval-key.json`` beside the results and never goes into the app's database:
labelers, admins and the app's exports all stay blind. Once every assignment is done or skipped, the rankings
give win rates against the baseline, Likert means, flag rates and Elo ratings (``human-eval.json``), and a page
with the two plots (``human-eval.html``).
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from matplotlib.figure import Figure

from tiller.config import ConfigError
from tiller.data import FLAGS
from tiller.eval.elo import Match, elo_intervals, elo_ratings
from tiller.eval.evaluate import MEAN_BOUNDS, mean_ci, outcome_summary, wilson
from tiller.eval.plots import error_bars, finite, plot_panels
from tiller.eval.results import Estimate, WinRate, _elo, _estimates, _int, _obj, _str
from tiller.runs import atomic_write_text

KEY_FILE = "human-eval-key.json"
LABELS_FILE = "human-eval-labels.jsonl"  # the app's export of the batch: blind, as labelers saw it
RESULTS_FILE = "human-eval.json"
REPORT_FILE = "human-eval.html"
# Always drawn and printed (InstructGPT fig. 4: fails to follow instructions, hallucinations, inappropriate);
# the app's other flags are drawn when some answer got them.
HEADLINE_FLAGS = ("fails_instruction", "hallucination", "harmful_advice", "inappropriate")
TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class HumanEval:
    """What labelers said about each policy; ``policies`` includes the baseline, in the order given."""

    baseline: str
    policies: list[str] = field(default_factory=list)
    win_rates: dict[str, WinRate] = field(default_factory=dict)  # policy (not the baseline) -> vs the baseline
    likert: dict[str, Estimate] = field(default_factory=dict)  # policy -> mean 1-7 score, 95% normal interval
    flags: dict[str, dict[str, Estimate]] = field(default_factory=dict)  # policy -> flag -> share, Wilson interval
    elo: dict[str, float] = field(default_factory=dict)  # the baseline at 1000
    elo_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # 95% bootstrap
    n_items: int = 0  # prompts ranked at least once
    n_labels: int = 0  # rankings (an item ranked by two labelers counts twice)
    labelers: list[str] = field(default_factory=list)
    batch: str = ""

    @property
    def flag_names(self) -> list[str]:
        """Every flag with an estimate, in the app's order."""
        seen = {f for per in self.flags.values() for f in per}
        return [f for f in FLAGS if f in seen] + sorted(seen - set(FLAGS))

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "baseline": self.baseline, "policies": list(self.policies),
                "n_items": self.n_items, "n_labels": self.n_labels, "labelers": list(self.labelers),
                "win_rates": {p: w.to_dict() for p, w in self.win_rates.items()},
                "likert": {p: e.to_dict() for p, e in self.likert.items()},
                "flags": {p: {f: e.to_dict() for f, e in per.items()} for p, per in self.flags.items()},
                "elo": dict(self.elo), "elo_intervals": {p: list(iv) for p, iv in self.elo_intervals.items()}}

    @classmethod
    def from_dict(cls, d: Any) -> HumanEval:
        """Tolerant like ``results.RunResults.from_dict``: a missing part is empty, a bad entry dropped."""
        d = _obj(d)
        elo, intervals = _elo(d.get("elo"), d.get("elo_intervals"))

        def names(x: Any) -> list[str]:
            return [s for s in x if isinstance(s, str)] if isinstance(x, list) else []

        return cls(baseline=_str(d.get("baseline")) or "", policies=names(d.get("policies")),
                   win_rates={str(p): WinRate.from_dict(w) for p, w in _obj(d.get("win_rates")).items()},
                   likert=_estimates(d.get("likert")),
                   flags={str(p): _estimates(v) for p, v in _obj(d.get("flags")).items()},
                   elo=elo, elo_intervals=intervals, n_items=_int(d.get("n_items")) or 0,
                   n_labels=_int(d.get("n_labels")) or 0, labelers=names(d.get("labelers")),
                   batch=_str(d.get("batch")) or "")


# ---------------------------------------------------------------------------------------------- blinding


def _orders(k: int, n: int, rng: random.Random) -> list[list[int]]:
    """``n`` orders of ``k`` answers. Labelers favour some positions (often the first), so for k <= 5 every
    permutation is used once per block of k! prompts, blocks shuffled: each policy sits at each position, and
    before each other policy, equally often (up to the last, incomplete block). Above that, random orders."""
    if k > 5:
        return [rng.sample(range(k), k) for _ in range(n)]
    perms = [list(p) for p in itertools.permutations(range(k))]
    out: list[list[int]] = []
    while len(out) < n:
        block = perms[:]
        rng.shuffle(block)
        out += block
    return out[:n]


def blind_items(prompts: list, answers: dict[str, list[str]], seed: int) -> tuple[list[dict], dict[str, list[str]]]:
    """Rank-batch records (``id``, ``prompt``, ``responses``) with the policies' answers in a shuffled order per
    prompt, and the key: item id -> policy name at each position. The ids say nothing about the policies."""
    names = list(answers)
    if len(names) < 2:
        raise ConfigError(f"human evaluation compares two or more policies, got {len(names)}")
    for name in names:
        if len(answers[name]) != len(prompts):
            raise ConfigError(f"{name}: {len(answers[name])} answers for {len(prompts)} prompts")
    width = max(4, len(str(len(prompts))))
    records, key = [], {}
    for i, (prompt, order) in enumerate(zip(prompts, _orders(len(names), len(prompts), random.Random(seed)),
                                            strict=True)):
        item = f"item-{i:0{width}d}"
        records.append({"id": item, "prompt": prompt, "responses": [answers[names[j]][i] for j in order]})
        key[item] = [names[j] for j in order]
    return records, key


# ---------------------------------------------------------------------------------------------- the maths


def _places(ranking: Any, k: int, item: str) -> list[int]:
    """Group number of each answer (0 is best; tied answers share one) from a ranking ``[[2], [0, 1]]``."""
    groups = ranking if isinstance(ranking, list) else []
    place = {i: g for g, group in enumerate(groups) if isinstance(group, list) for i in group if isinstance(i, int)}
    placed = sum(len(group) if isinstance(group, list) else 1 for group in groups)
    if placed != k or sorted(place) != list(range(k)):
        raise ConfigError(f"item {item}: ranking {ranking!r} does not place each of its {k} answers once")
    return [place[i] for i in range(k)]


def _outcome(a: int, b: int) -> float:
    """1 if the answer in group ``a`` is ranked above the one in group ``b``, 0.5 if tied, 0 if below."""
    return 1.0 if a < b else 0.5 if a == b else 0.0


def human_results(records: list[dict], key: dict[str, list[str]], baseline: str, seed: int = 0,
                  order: list[str] | None = None) -> HumanEval:
    """Win rates, Likert means, flag rates and Elo from the app's exported ranking records (``id``,
    ``responses``, ``ranking``, ``labeler``, ``likert``, ``flags``) and the key. Each labeler's ranking counts
    once; rankings of one item by several labelers are treated as independent in the intervals. ``order``:
    the policies' order in the result (default: the baseline, then the others by name)."""
    names = sorted({p for ps in key.values() for p in ps})
    if baseline not in names:
        raise ConfigError(f"baseline {baseline!r} is not among the policies of the key ({', '.join(names)})")
    policies = [p for p in order if p in names] if order else [baseline] + [p for p in names if p != baseline]
    policies += [p for p in names if p not in policies]
    outcomes: dict[str, list[float]] = {p: [] for p in policies if p != baseline}
    scores: dict[str, list[float]] = {p: [] for p in policies}
    hits: dict[str, Counter[str]] = {p: Counter() for p in policies}
    flagged_n = Counter[str]()
    matches: list[Match] = []
    for rec in records:
        item = str(rec.get("id"))
        if item not in key:
            raise ConfigError(f"item {item!r} is not in the key: the labels and the key come from different imports")
        at = key[item]
        if len(rec.get("responses") or []) != len(at):
            raise ConfigError(f"item {item}: {len(rec.get('responses') or [])} answers, the key has {len(at)}")
        place = _places(rec.get("ranking"), len(at), item)
        for i, j in itertools.combinations(range(len(at)), 2):  # Elo: every pair of the ranking
            matches.append((at[i], at[j], _outcome(place[i], place[j])))
        b = at.index(baseline)
        for i, p in enumerate(at):
            if p != baseline:
                outcomes[p].append(_outcome(place[i], place[b]))
        likert, flags = rec.get("likert"), rec.get("flags")
        for i, p in enumerate(at):
            if isinstance(likert, list) and i < len(likert) and finite(likert[i]) is not None:
                scores[p].append(float(likert[i]))
            if isinstance(flags, list) and i < len(flags):  # None: not asked, so not in the share
                flagged_n[p] += 1
                hits[p].update({f for f in flags[i] if isinstance(f, str)} if isinstance(flags[i], list) else ())
    flag_names = list(FLAGS) + sorted({f for c in hits.values() for f in c} - set(FLAGS))

    def est(ci: tuple[float, float, float], n: int) -> Estimate:
        return Estimate(*ci, n=n) if n else Estimate(n=0)

    h = HumanEval(baseline=baseline, policies=policies, n_items=len({str(r.get("id")) for r in records}),
                  n_labels=len(records), labelers=sorted({str(r.get("labeler")) for r in records}))
    h.win_rates = {p: WinRate.from_dict(outcome_summary(xs)) if xs else WinRate(n=0) for p, xs in outcomes.items()}
    h.likert = {p: est(mean_ci(xs, MEAN_BOUNDS["likert"]), len(xs)) for p, xs in scores.items()}
    h.flags = {p: {f: est(wilson(hits[p][f], flagged_n[p]), flagged_n[p]) for f in flag_names} for p in policies}
    if matches:
        h.elo = elo_ratings(matches, anchor=baseline)
        h.elo_intervals = elo_intervals(matches, seed=seed, anchor=baseline)
    return h


# ---------------------------------------------------------------------------------------------- the app


def _read_key(path: Path) -> dict[str, Any]:
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(key, dict) or not isinstance(key.get("items"), dict) or not isinstance(key.get("policies"), list):
        raise ConfigError(f"{path}: not a human evaluation key (items, policies)")
    return key


def _import_once(db: str, batch: str, prompts: list, answers: dict[str, list[str]], out: Path, overlap: int,
                 seed: int) -> dict[str, Any]:
    """The key of ``batch``: the one on file if the batch is already in the app (waiting resumes), else a new
    one, written before the import so that an imported batch always has its key."""
    from sqlalchemy import select

    from tiller.feedback.db import init_db, make_engine, session_factory
    from tiller.feedback.errors import NotFound, ServiceError
    from tiller.feedback.models import Item
    from tiller.feedback.records import RecordError, parse_lines
    from tiller.feedback.services.batches import get_batch, import_batch

    key_path = out / KEY_FILE
    init_db(db)
    engine = make_engine(db)
    try:
        with session_factory(engine)() as session:
            try:
                found = get_batch(session, batch)
            except NotFound:
                found = None
            if found is not None:
                if found.kind != "rank":
                    raise ConfigError(f"batch {batch!r} is a {found.kind} batch, not a ranking one")
                if not key_path.is_file():
                    raise ConfigError(f"batch {batch!r} is already in the app but its key {key_path} is missing: "
                                      "without it nobody can tell which policy wrote which answer. Restore the key "
                                      "or give another --batch")
                key = _read_key(key_path)
                ids = set(session.scalars(select(Item.external_id).where(Item.batch_id == found.id)))
                if key.get("batch") != batch or ids != set(key["items"]):
                    raise ConfigError(f"{key_path} is not the key of batch {batch!r}: give another --batch or --out")
                if answers and set(answers) != set(key["policies"]):
                    raise ConfigError(f"batch {batch!r} compares {', '.join(key['policies'])}, not "
                                      f"{', '.join(answers)}: give another --batch")
                print(f"batch {batch!r} is already in the app; waiting for labelers ...", flush=True)
                return key
            records, items = blind_items(prompts, answers, seed)
            key = {"batch": batch, "seed": seed, "policies": list(answers), "items": items}
            atomic_write_text(key_path, json.dumps(key, indent=1) + "\n")
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            try:  # no `policy` in the records, so the items' meta holds nothing that names one
                import_batch(session, batch, "rank", overlap,
                             parse_lines(text, "rank", source=f"batch {batch}", allow_empty=True))
            except (ServiceError, RecordError) as e:
                key_path.unlink(missing_ok=True)
                raise ConfigError(f"cannot import the answers as batch {batch!r}: {e}") from None
            print(f"imported {len(records)} prompts x {len(answers)} answers as batch {batch!r}; "
                  "waiting for labelers at `tiller app` ...", flush=True)
            return key
    finally:
        engine.dispose()


def already_imported(db: str, batch: str, out_dir: Path) -> bool:
    """Whether ``human_eval`` would resume waiting (the key on file and the batch in the app): no answers to
    sample then. Touches no database while there is no key."""
    if not (Path(out_dir) / KEY_FILE).is_file():
        return False
    from tiller.feedback.db import init_db, make_engine, session_factory
    from tiller.feedback.errors import NotFound
    from tiller.feedback.services.batches import get_batch

    init_db(db)
    engine = make_engine(db)
    try:
        with session_factory(engine)() as session:
            get_batch(session, batch)
            return True
    except NotFound:
        return False
    finally:
        engine.dispose()


def human_eval(db: str, batch: str, prompts: list, answers: dict[str, list[str]], baseline: str, out_dir: Path,
               overlap: int = 1, seed: int = 0, poll_s: float = 5.0, timeout_s: float | None = None) -> HumanEval:
    """Import the answers as ranking batch ``batch`` once, wait until every assignment is done or skipped, then
    compute the results and write ``out_dir/human-eval.json``. Called again (after a timeout, a crash, ^C) it
    resumes waiting on the same batch; ``answers`` may then be empty."""
    from tiller.feedback.services.export import wait_and_export

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if answers and baseline not in answers:
        raise ConfigError(f"baseline {baseline!r} is not one of the policies ({', '.join(answers)})")
    key = _import_once(db, batch, prompts, answers, out, overlap, seed)
    if baseline not in key["policies"]:
        raise ConfigError(f"batch {batch!r} compares {', '.join(map(str, key['policies']))}: no {baseline!r}")
    try:
        wait_and_export(db, batch, out / LABELS_FILE, poll_s=poll_s, timeout_s=timeout_s)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; run the same command again to go on waiting (nothing is imported twice)") from None
    lines = (out / LABELS_FILE).read_text(encoding="utf-8").splitlines()
    h = human_results([json.loads(line) for line in lines if line.strip()], key["items"], baseline, seed,
                      order=[str(p) for p in key["policies"]])
    h.batch = batch
    atomic_write_text(out / RESULTS_FILE, json.dumps(h.to_dict(), indent=2) + "\n")
    return h


# ---------------------------------------------------------------------------------------------- plots, page


def shown_flags(h: HumanEval) -> list[str]:
    """The headline flags, then any other flag some answer got."""
    got = [f for f in h.flag_names if any((finite(per[f].value) or 0.0) > 0 for per in h.flags.values() if f in per)]
    return [f for f in h.flag_names if f in HEADLINE_FLAGS or f in got]


def plot_human(h: HumanEval, out_dir: Path) -> dict[str, str | None]:
    """The two PNGs of the page: InstructGPT's fig. 1 (each policy's win rate against the baseline, 95%
    intervals, 50% dashed) and fig. 4 (a panel per flag and the Likert, a bar per policy). None: nothing to draw."""
    out = Path(out_dir)
    colours = {p: f"C{i % 10}" for i, p in enumerate(h.policies)}
    plots: dict[str, str | None] = {"human_win_rates": None, "human_metadata": None}
    wins = [(p, w) for p in h.policies if (w := h.win_rates.get(p)) is not None and finite(w.rate) is not None]
    if wins:
        fig = Figure(figsize=(max(4.0, 1.1 * len(wins) + 2), 3.6))
        ax = fig.subplots()
        vals = [float(w.rate) for _, w in wins]  # type: ignore[arg-type]  # finite above
        ax.errorbar(range(len(wins)), vals, yerr=error_bars(vals, [w for _, w in wins]), fmt="none", ecolor="#444",
                    capsize=4)
        ax.scatter(range(len(wins)), vals, s=60, c=[colours[p] for p, _ in wins], zorder=3)
        ax.axhline(0.5, color="#444", ls="--", lw=1)
        ax.set_xticks(range(len(wins)), [p for p, _ in wins], rotation=30, ha="right")
        ax.set(xlim=(-0.6, len(wins) - 0.4), ylim=(0, 1), ylabel=f"win rate against {h.baseline}")
        ax.yaxis.set_major_formatter(lambda y, _: f"{y:.0%}")
        ax.grid(axis="y", alpha=0.3)
        fig.savefig(out / "human-win-rates.png", dpi=110, bbox_inches="tight")
        plots["human_win_rates"] = "human-win-rates.png"
    panels = [(f, {p: h.flags[p][f] for p in h.policies if f in h.flags.get(p, {})}) for f in shown_flags(h)]
    panels.append(("likert", {p: h.likert[p] for p in h.policies if p in h.likert}))
    panels = [(k, {p: e for p, e in v.items() if finite(e.value) is not None}) for k, v in panels]
    panels = [(k, v) for k, v in panels if v]
    plots["human_metadata"] = plot_panels(panels, h.policies, out / "human-metadata.png")
    return plots


def write_human_report(h: HumanEval, out_dir: Path) -> Path:
    """``out_dir/human-eval.html``: the standalone page (``templates/human_report.html.j2``) and its PNGs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    html = env.get_template("human_report.html.j2").render(human=h, human_plots=plot_human(h, out))
    atomic_write_text(out / REPORT_FILE, html + "\n")
    return out / REPORT_FILE


__all__ = ["HumanEval", "already_imported", "blind_items", "human_eval", "human_results", "plot_human",
           "write_human_report"]
