"""The report's plots, one function per PNG: each takes the part of the results it draws and a path, and
returns the file's name, or None when there is nothing to draw (the page then leaves the plot out).

Matplotlib's object API (``Figure``) draws with Agg and leaves pyplot's global state alone, so tests and the
pipeline can draw in one process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tiller.eval.results import CONSTRAINT_BUCKETS, CurvePoint, Estimate, PolicyEval, RMRound, WinRate
from tiller.world.judge import METADATA

TRAINING_KEYS = ("objective/score", "objective/kl", "loss/policy", "policy/entropy")
EloRow = tuple[str, float, float | None, float | None]  # (name, rating, lo, hi)


def finite(x: Any) -> float | None:
    """A finite float, or None for anything missing, non-numeric or NaN."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def family_order(fams: dict[str, WinRate]) -> list[str]:
    """Families sorted, then the constraint buckets, ``overall`` last."""
    tail = [b for b in (*CONSTRAINT_BUCKETS, "overall") if b in fams]
    return sorted(f for f in fams if f not in tail) + tail


def title(key: str) -> str:
    """A metadata key as a column or panel title: ``fails_instruction`` -> ``fails instruction``."""
    return key.replace("_", " ")


# ---------------------------------------------------------------------------------------------- plots


def _save(fig: Figure, path: Path) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path.name


def plot_win_rates(win_rates: dict[str, dict[str, WinRate]], path: Path, judge: str = "gold") -> str | None:
    """Per comparison, horizontal bars of the win rate per family with 95% intervals and the 50% line; rates
    with no families (an AI judge on a project's prompts: ``overall`` only) share one panel, a bar per
    comparison. ``judge`` names who judged, on the axis."""
    comps = {c: {f: w for f, w in fams.items() if finite(w.rate) is not None} for c, fams in win_rates.items()}
    comps = {c: v for c, v in comps.items() if v}
    if not comps:
        return None
    if all(list(v) == ["overall"] for v in comps.values()):
        comps = {"overall": {c: v["overall"] for c, v in comps.items()}}
    heights = [0.3 * len(v) + 0.8 for v in comps.values()]
    fig = Figure(figsize=(7, sum(heights) + 0.3))
    axes = fig.subplots(len(comps), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (comp, fams) in zip(axes, comps.items(), strict=True):
        names = family_order(fams) if comp != "overall" else list(fams)
        rates = [finite(fams[f].rate) or 0.0 for f in names]
        los, his = [finite(fams[f].lo) for f in names], [finite(fams[f].hi) for f in names]
        lo = [0.0 if x is None else max(0.0, r - x) for r, x in zip(rates, los, strict=True)]
        hi = [0.0 if x is None else max(0.0, x - r) for r, x in zip(rates, his, strict=True)]
        colours = ["#2b6cb0" if f == "overall" or comp == "overall" else "#d69e2e" if f in CONSTRAINT_BUCKETS
                   else "#90b4de" for f in names]
        ax.barh(range(len(names)), rates, xerr=[lo, hi], color=colours, capsize=3)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.axvline(0.5, color="#444", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:.0%}")
        ax.set_title(comp, loc="left", fontsize=10)
    axes[-1].set_xlabel(f"{judge} win rate (ties count half), 95% interval")
    fig.tight_layout()
    return _save(fig, path)


def plot_family_scores(evals: dict[str, PolicyEval], path: Path) -> str | None:
    """Grouped bars: mean gold score per family, one bar per policy."""
    per = {p: ev.per_family for p, ev in evals.items() if ev.per_family}
    fams = sorted({f for v in per.values() for f in v})
    if not fams:
        return None
    fig = Figure(figsize=(max(6.0, 1.1 * len(fams) + 2), 3.6))
    ax = fig.subplots()
    width = 0.8 / len(per)
    for i, (policy, v) in enumerate(per.items()):
        ys = [finite(v[f].score) if f in v else None for f in fams]
        xs = [j + (i - (len(per) - 1) / 2) * width for j in range(len(fams))]
        ax.bar(xs, [y if y is not None else 0.0 for y in ys], width, label=policy)
    ax.set_xticks(range(len(fams)), fams)
    ax.set_ylabel("mean gold score")
    ax.legend(fontsize=8, ncols=min(len(per), 4), loc="upper left", bbox_to_anchor=(0, -0.12))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _metadata_panels(evals: dict[str, PolicyEval]) -> list[tuple[str, dict[str, Estimate]]]:
    """(item, {policy: estimate}) for each METADATA share and the Likert that some policy has a value for."""
    items = [(k, {p: e for p, ev in evals.items() if (e := ev.metadata.get(k)) and finite(e.value) is not None})
             for k in METADATA]
    items.append(("likert", {p: e for p, ev in evals.items()
                             if (e := ev.aspect_means.get("likert")) and finite(e.value) is not None}))
    return [(k, v) for k, v in items if v]


def plot_metadata(evals: dict[str, PolicyEval], path: Path) -> str | None:
    """InstructGPT's figure 4 in the world's terms: a panel per metadata item (and the 1-7 Likert), a bar per
    policy with its 95% interval, each policy one colour across the panels."""
    return plot_panels(_metadata_panels(evals), list(evals), path)


def error_bars(vals: list[float], ests: list[Any]) -> list[list[float]]:
    """Error bar lengths below and above each value from its estimate's ``lo`` and ``hi`` (none where missing)."""
    lo = [0.0 if (x := finite(e.lo)) is None else max(0.0, v - x) for v, e in zip(vals, ests, strict=True)]
    hi = [0.0 if (x := finite(e.hi)) is None else max(0.0, x - v) for v, e in zip(vals, ests, strict=True)]
    return [lo, hi]


def plot_panels(panels: list[tuple[str, dict[str, Estimate]]], policies: list[str], path: Path) -> str | None:
    """A panel per item (a share, or ``likert`` on 1-7), a bar per policy with its 95% interval, each policy
    one colour across the panels (the gold judge's metadata and people's flags alike)."""
    if not panels:
        return None
    colours = {p: f"C{i % 10}" for i, p in enumerate(policies)}
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3 * cols, 2.9 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (item, est) in zip(axes, panels, strict=False):
        names = [p for p in policies if p in est]
        vals = [finite(est[p].value) or 0.0 for p in names]
        ax.bar(range(len(names)), vals, yerr=error_bars(vals, [est[p] for p in names]),
               color=[colours[p] for p in names], capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_title("Likert (1-7)" if item == "likert" else title(item), loc="left", fontsize=10)
        if item == "likert":
            ax.set_ylim(1, 7)
        else:
            ax.set_ylim(0, 1)
            ax.yaxis.set_major_formatter(lambda y, _: f"{y:.0%}")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def plot_overoptimisation(curves: dict[str, list[CurvePoint]], path: Path) -> str | None:
    """RM score (left) and gold score (right; left out when no point has one) against sqrt(KL) from the initial
    policy, as in Gao et al. 2022."""
    series: dict[str, list[tuple[float, float | None, float | None]]] = {}
    oracle: dict[str, list[tuple[float, float]]] = {}  # best-of-n picked by the gold judge: a perfect RM's pick
    for name, points in curves.items():
        at = [(math.sqrt(max(kl, 0.0)), p) for p in points if (kl := finite(p.kl)) is not None]
        if at:
            series[name] = sorted(((x, finite(p.rm_score), finite(p.gold_score)) for x, p in at), key=lambda t: t[0])
        if best := sorted((x, g) for x, p in at if (g := finite(p.oracle_gold_score)) is not None):
            oracle[name] = best
    if not series:
        return None
    # the gold panel only where a gold judge scored something (a project run has none)
    panels = ("RM score", "gold score") if any(p[2] is not None for pts in series.values() for p in pts) \
        else ("RM score",)
    fig = Figure(figsize=(5 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for col, (ax, label) in enumerate(zip(axes, panels, strict=True), start=1):
        for name, pts in series.items():
            xy = [(p[0], y) for p in pts if (y := p[col]) is not None]
            if xy:
                ax.plot(*zip(*xy, strict=True), marker="o", ms=3, ls="--" if "bon" in name else "-", label=name)
        if col == 2:
            for name, best in oracle.items():
                ax.plot(*zip(*best, strict=True), marker=".", ms=3, ls=":", color="grey", label=f"{name}, gold-picked")
        ax.set_xlabel("√KL from the initial policy (√nats)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_training(training: dict[str, list[dict[str, Any]]], path: Path) -> str | None:
    """The PPO training curves, one panel per metric, one line per run; rows are tracking's metric rows."""
    keys = [k for k in TRAINING_KEYS if any(finite(r.get(k)) is not None for rows in training.values() for r in rows)]
    if not keys:
        return None
    fig = Figure(figsize=(10, 3.2 * math.ceil(len(keys) / 2)))
    axes = fig.subplots(math.ceil(len(keys) / 2), 2, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        for run, rows in training.items():
            xy = [(r["step"], r[key]) for r in rows if finite(r.get("step")) is not None and finite(r.get(key)) is not None]
            if xy:
                ax.plot(*zip(*xy, strict=True), label=run, lw=1.2)
        ax.set_title(key, loc="left", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def plot_elo(rows: list[EloRow], path: Path, judge: str = "gold") -> str | None:
    """Elo per policy with its interval, from ``judge``'s comparisons."""
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r[1])
    fig = Figure(figsize=(6, 0.4 * len(rows) + 1.2))
    ax = fig.subplots()
    ys = range(len(rows))
    lo = [r[1] - r[2] if r[2] is not None else 0.0 for r in rows]
    hi = [r[3] - r[1] if r[3] is not None else 0.0 for r in rows]
    ax.errorbar([r[1] for r in rows], ys, xerr=[lo, hi], fmt="o", color="#2b6cb0", capsize=3)
    ax.set_yticks(ys, [r[0] for r in rows])
    ax.set_xlabel(f"Elo (Bradley-Terry fit to {judge} comparisons; 95% bootstrap interval)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_calibration(rm: dict[str, RMRound], path: Path) -> str | None:
    """Reward-model calibration: predicted P(chosen wins) against the observed frequency, per round."""
    rounds = {r: [(p, o, finite(b.n) or 1) for b in d.calibration or []
                  if (p := finite(b.predicted)) is not None and (o := finite(b.observed)) is not None]
              for r, d in rm.items()}
    rounds = {r: v for r, v in rounds.items() if v}
    if not rounds:
        return None
    fig = Figure(figsize=(4.6, 4.4))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#888", ls="--", lw=1, label="perfect")
    for rnd, bins in rounds.items():
        most = max(n for _, _, n in bins)
        ax.plot([p for p, _, _ in bins], [o for _, o, _ in bins], lw=1)
        ax.scatter([p for p, _, _ in bins], [o for _, o, _ in bins], s=[12 + 60 * math.sqrt(n / most) for *_, n in bins],
                   label=str(rnd))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(preferred wins)", ylabel="observed frequency")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
