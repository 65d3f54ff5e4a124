"""``tiller control summary DIR``: every setting of a measurement folder over its seeds, against true-reward PPO.

Issue #16 asks for the learned-reward results "over 3 seeds, with the spread shown", and for a comparison with
the same PPO on the true reward at a bar of 80%. A measurement folder (``scripts/measure_control.sh``) holds one
run folder per setting and seed (``learned-s0``, ``true-s1``, ...). Runs whose configs are equal but for the
seed are one *setting*; a learned-reward setting's baseline is the true-reward setting with the same env, steps
and PPO. Everything is read from the finished runs' ``control/curve.json`` and manifests: only means, spreads
and ratios are computed here (pure functions, so they can be checked on hand-made numbers).
"""

from __future__ import annotations

import copy
import json
import re
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment
from matplotlib.figure import Figure

from tiller.config import ConfigError, to_dict
from tiller.control.config import ControlConfig
from tiller.control.report import finite, load_run, save_png, series
from tiller.runs import read_manifest

BAR = 0.8  # issue #16: a learned-reward final true return of >= 80% of true-reward PPO's counts as a success
# Keys that do not make a different setting: the seeds (what varies between a setting's runs) and what does not
# change the result (trackers, checkpoint spacing, the app's settings, unused with the oracle). Dotted: sections.
IGNORED = ("seed", "predictor.seed", "report_to", "checkpoint_every", "app")
# What a true-reward setting must share with a learned-reward one to be its baseline: the task (env_kwargs
# change it, e.g. Hopper's termination; absent in older configs) and the RL.
BASELINE_KEYS = ("env", "env_kwargs", "total_steps", "n_envs", "ppo")
SMOOTH = 5  # trailing mean over this many logged points of each seed's training-episode curve
SEED_SUFFIX = re.compile(r"-s\d+$")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>tiller control summary: {{ title }}</title>
<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%}.note{color:#666}</style></head>
<body><h1>Deep RL from preferences over seeds: {{ title }}</h1>
<table><tr>{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for r in rows %}<tr>{% for c in r %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>
{% for n in notes %}<p class="note">{{ n }}</p>{% endfor %}
{% if skipped %}<p class="note">Skipped (no finished run): {{ skipped | join(", ") }}</p>{% endif %}
{% for p in plots %}<h2>{{ p.title }}</h2><p class="note">{{ p.note }}</p><img src="{{ p.file }}" alt="{{ p.title }}">
{% endfor %}</body></html>
"""

NOTES = [
    "Final: the deterministic policy's mean true return over its evaluation episodes (± their std); the true "
    "return is the environment's own reward, which the learned-reward policy never saw. Over seeds: mean ± "
    "sample std [min, max].",
    f"vs true reward: the learned-reward final over the true-reward baseline's final of the same seed, and the "
    f"mean over seeds over the baseline's mean; ✓ reaches the issue's bar of {BAR:.0%}, ✗ does not. "
    "\"-\": the baseline's final return is <= 0, where a ratio means nothing (a return near 0 or below "
    "is no scale to measure against).",
]


# -- settings: grouping runs ------------------------------------------------------------------------------

def find_runs(folder: Path, exclude: Path | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The finished runs directly under ``folder`` (``load_run``'s dict plus the manifest's ``config``), and
    the names of the other subfolders (unfinished or not runs); ``exclude`` (the summary's own folder) neither."""
    runs, skipped = [], []
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith(".")):
        if exclude is not None and sub.resolve() == Path(exclude).resolve():
            continue
        manifest = read_manifest(sub / "control")
        if not (sub / "control" / "curve.json").is_file() or manifest is None or "config" not in manifest:
            skipped.append(sub.name)
            continue
        runs.append({**load_run(sub), "config": manifest["config"]})
    return runs, skipped


def _with_defaults(config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    for k, v in defaults.items():
        if k not in out:
            out[k] = copy.deepcopy(v)
        elif isinstance(v, dict) and isinstance(out[k], dict) and v:
            out[k] = _with_defaults(out[k], v)
    return out


def setting(config: dict[str, Any]) -> dict[str, Any]:
    """The config, with today's defaults for keys it predates (a run made before ``env_kwargs`` existed ran
    with what is now its default), without the ``IGNORED`` keys: runs with equal settings are seeds of one
    setting."""
    out = _with_defaults(config, to_dict(ControlConfig()))
    for key in IGNORED:
        *parents, last = key.split(".")
        d: Any = out
        for p in parents:
            d = d.get(p) if isinstance(d, dict) else None
        if isinstance(d, dict):
            d.pop(last, None)
    return out


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _seed(run: dict[str, Any]) -> int:
    return int(run["config"].get("seed", 0))


def group_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Settings: ``{"name", "config" (the setting), "runs" (by seed, then name)}``, sorted by env and name.

    A setting is named by its folders' common stem (``learned-s0`` -> ``learned``), stems joined with ``+``
    when they differ; settings that would share a name get the config keys that tell them apart appended."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_key.setdefault(json.dumps(setting(run["config"]), sort_keys=True, default=str), []).append(run)
    groups = []
    for key, members in by_key.items():
        members = sorted(members, key=lambda r: (_seed(r), r["name"]))
        stems = sorted({SEED_SUFFIX.sub("", r["name"]) for r in members})
        groups.append({"name": "+".join(stems), "config": json.loads(key), "runs": members})
    for name in {g["name"] for g in groups}:
        same = [g for g in groups if g["name"] == name]
        if len(same) > 1:
            flats = [_flat(g["config"]) for g in same]
            keys = sorted({k for f in flats for k in f if len({json.dumps(x.get(k), default=str) for x in flats}) > 1})
            for g, f in zip(same, flats, strict=True):
                g["name"] = f"{name} ({', '.join(f'{k}={json.dumps(f.get(k), default=str)}' for k in keys)})"
    return sorted(groups, key=lambda g: (str(g["config"].get("env", "")), g["name"]))


# -- the numbers --------------------------------------------------------------------------------------------

def _range(values: list[float]) -> list[float] | None:
    return [min(values), max(values)] if values else None


def summarise(group: dict[str, Any]) -> dict[str, Any]:
    """One setting's numbers: per seed the final true return (± over its eval episodes), labels, steps and
    minutes; over seeds the mean, sample std (None for one seed), min and max of the finals."""
    seeds = []
    for run in group["runs"]:
        m = run["metrics"]
        secs = finite(m.get("seconds"))
        seeds.append({"seed": _seed(run), "run": run["name"], "final": finite(m.get("eval/true_return")),
                      "final_std": finite(m.get("eval/true_return_std")), "labels": finite(m.get("labels/used")),
                      "steps": finite(m.get("steps")), "minutes": None if secs is None else secs / 60})
    finals = [s["final"] for s in seeds if s["final"] is not None]
    minutes = [s["minutes"] for s in seeds if s["minutes"] is not None]
    first = group["runs"][0]
    return {"name": group["name"], "env": first["env"], "reward": first["reward"],
            "runs": [r["name"] for r in group["runs"]], "config": group["config"], "seeds": seeds,
            "n": len(finals), "mean": statistics.fmean(finals) if finals else None,
            "std": statistics.stdev(finals) if len(finals) > 1 else None,
            "min": min(finals) if finals else None, "max": max(finals) if finals else None,
            "labels": _range([s["labels"] for s in seeds if s["labels"] is not None]),
            "steps": _range([s["steps"] for s in seeds if s["steps"] is not None]),
            "minutes": statistics.fmean(minutes) if minutes else None}


def ratio(learned: float | None, true: float | None) -> float | None:
    """learned / true; None when either is missing or the baseline's return is <= 0 (no scale to compare on)."""
    if learned is None or true is None or true <= 0:
        return None
    return learned / true


def find_baseline(learned: dict[str, Any], settings: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The true-reward setting with the same ``BASELINE_KEYS`` as a learned-reward one; with several, the one
    sharing most seeds, then the first by name."""
    def same(s: dict[str, Any]) -> bool:
        return all(s["config"].get(k) == learned["config"].get(k) for k in BASELINE_KEYS)

    seeds = {s["seed"] for s in learned["seeds"]}
    candidates = [s for s in settings if s["reward"] == "true" and same(s)]
    candidates.sort(key=lambda s: (-len(seeds & {x["seed"] for x in s["seeds"]}), s["name"]))
    return candidates[0] if candidates else None


def ratios(learned: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Per seed present in both settings, learned final / true final of that seed, and the ratio of the two
    settings' means over seeds; each with whether it reaches ``BAR`` (None where there is no ratio)."""
    base: dict[int, dict[str, Any]] = {}
    for s in baseline["seeds"]:
        base.setdefault(s["seed"], s)  # a repeated seed: its first run by name
    per_seed = []
    for s in learned["seeds"]:
        if (b := base.get(s["seed"])) is not None:
            r = ratio(s["final"], b["final"])
            per_seed.append({"seed": s["seed"], "run": s["run"], "baseline_run": b["run"], "learned": s["final"],
                             "true": b["final"], "ratio": r, "reaches": None if r is None else r >= BAR})
    of_means = ratio(learned["mean"], baseline["mean"])
    return {"baseline": baseline["name"], "per_seed": per_seed, "of_means": of_means,
            "of_means_reaches": None if of_means is None else of_means >= BAR}


def summarise_runs(runs: list[dict[str, Any]], skipped: list[str]) -> dict[str, Any]:
    """All settings' numbers, each learned-reward one with its ratios to its baseline (``vs_true``, or None)."""
    settings = [summarise(g) for g in group_runs(runs)]
    for s in settings:
        s["vs_true"] = None
        s["baseline_for"] = []
    for s in settings:
        if s["reward"] == "learned" and (b := find_baseline(s, settings)) is not None:
            s["vs_true"] = ratios(s, b)
            b["baseline_for"].append(s["name"])
    return {"bar": BAR, "ignored_keys": list(IGNORED), "skipped": skipped, "settings": settings}


# -- the table ------------------------------------------------------------------------------------------------

HEADER = ["setting", "reward", "env", "steps", "labels", "final true return per seed",
          "over seeds: mean ± std [min, max]", "vs true reward, per seed", "vs true reward, of means", "minutes"]


def _num(x: float | None, fmt: str = ".0f") -> str:
    return "-" if x is None else format(x, fmt)


def _span(r: list[float] | None) -> str:
    return "-" if r is None else _num(r[0]) if r[0] == r[1] else f"{_num(r[0])}-{_num(r[1])}"


def _verdict(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f} {'✓' if r >= BAR else '✗'}"


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    """One row of ``HEADER``'s cells per setting (strings, shared by the Markdown and the HTML table)."""
    rows = []
    for s in summary["settings"]:
        finals = "; ".join(f"s{x['seed']} {_num(x['final'])}" + ("" if x["final_std"] is None else
                                                                 f" ± {_num(x['final_std'])}") for x in s["seeds"])
        spread = _num(s["mean"]) if s["std"] is None else f"{_num(s['mean'])} ± {_num(s['std'])}"
        if s["n"] > 1:
            spread += f" [{_num(s['min'])}, {_num(s['max'])}]"
        spread += f" (n={s['n']})"
        if (v := s["vs_true"]) is not None:
            per_seed = "; ".join(f"s{x['seed']} {_verdict(x['ratio'])}" for x in v["per_seed"]) or "no common seed"
            of_means = f"{_verdict(v['of_means'])} (vs {v['baseline']})"
        elif s["reward"] == "true":
            per_seed = of_means = "baseline" if s["baseline_for"] else "-"
        else:
            per_seed = of_means = "no true-reward baseline"
        rows.append([s["name"], s["reward"], s["env"], _span(s["steps"]),
                     _span(s["labels"]) if s["reward"] == "learned" else "-", finals, spread, per_seed, of_means,
                     _num(s["minutes"], ".1f")])
    return rows


def markdown(summary: dict[str, Any]) -> str:
    """The table in Markdown (pipes in names escaped), then the notes on how to read it."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [line(HEADER), "|" + "|".join("---" for _ in HEADER) + "|"] + [line(r) for r in table_rows(summary)]
    return "\n".join(lines) + "\n\n" + "\n\n".join(NOTES) + "\n"


# -- the plots ----------------------------------------------------------------------------------------------

def trailing_mean(y: np.ndarray, window: int) -> np.ndarray:
    """Mean of each point and the ``window - 1`` before it (fewer at the start): (n,) -> (n,)."""
    c = np.concatenate([[0.0], np.cumsum(y, dtype=float)])
    i = np.arange(1, len(y) + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)


def seed_band(runs: list[dict[str, Any]], window: int = SMOOTH) -> tuple[np.ndarray, ...] | None:
    """Seeds' training-episode true return on one step grid: (steps, mean, min, max), each (n,).

    Seeds log at different steps: each seed's curve (smoothed by ``trailing_mean``) is interpolated onto the
    union of their steps, kept only where every seed has data (from the latest first to the earliest last
    step). Seeds with no episode logged are left out; None when nothing is left."""
    curves = [(np.asarray(xs, float), trailing_mean(np.asarray(ys, float), window))
              for xs, ys in (series(r, "step", "true_return") for r in runs) if xs]
    if not curves:
        return None
    lo, hi = max(xs[0] for xs, _ in curves), min(xs[-1] for xs, _ in curves)
    grid = np.unique(np.concatenate([xs for xs, _ in curves]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if not len(grid):
        return None
    ys = np.stack([np.interp(grid, xs, y) for xs, y in curves])  # (seeds, n)
    return grid, ys.mean(0), ys.min(0), ys.max(0)


def plot_curves(groups: list[dict[str, Any]], colours: dict[str, str], path: Path) -> str | None:
    """Each setting's mean over seeds of the true return against env steps, the min-max band across seeds
    shaded; the random policy's mean return dashed when all runs share one env."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    drawn = False
    for g in groups:
        if (band := seed_band(g["runs"])) is None:
            continue
        steps, mean, low, high = band
        ax.plot(steps, mean, "-", color=colours[g["name"]], label=f"{g['name']} (n={len(g['runs'])})")
        ax.fill_between(steps, low, high, color=colours[g["name"]], alpha=0.2, lw=0)
        drawn = True
    if not drawn:
        return None
    runs = [r for g in groups for r in g["runs"]]
    randoms = [x for r in runs if (x := finite(r["metrics"].get("eval/random_return"))) is not None]
    if randoms and len({r["env"] for r in runs}) == 1:
        ax.axhline(float(np.mean(randoms)), ls="--", color="grey", label="random policy")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("true episode return (training episodes)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_finals(settings: list[dict[str, Any]], colours: dict[str, str], path: Path) -> str | None:
    """Each setting's final true return per seed (dots) and their mean (a bar); each baseline's mean as a line
    and ``BAR`` of it dashed."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    drawn = False
    for i, s in enumerate(settings):
        finals = [x["final"] for x in s["seeds"] if x["final"] is not None]
        if not finals:
            continue
        ax.plot(i + np.linspace(-0.12, 0.12, len(finals)) * (len(finals) > 1), finals, "o",
                color=colours[s["name"]], alpha=0.8)
        ax.plot([i - 0.25, i + 0.25], [s["mean"]] * 2, "-", color=colours[s["name"]], lw=3)
        drawn = True
    if not drawn:
        return None
    by_name = {s["name"]: s for s in settings}
    for name in sorted({s["vs_true"]["baseline"] for s in settings if s["vs_true"] is not None}):
        base = by_name[name]
        ax.axhline(base["mean"], color=colours[name], lw=1, label=f"{name} mean")
        if base["mean"] > 0:
            ax.axhline(BAR * base["mean"], color=colours[name], ls="--", lw=1, label=f"{BAR:.0%} of {name} mean")
    ax.set_xticks(range(len(settings)), [s["name"] for s in settings], rotation=20, ha="right")
    ax.set_ylabel("final true return (deterministic policy)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save_png(fig, path)


# -- the outputs --------------------------------------------------------------------------------------------

def _colours(names: list[str]) -> dict[str, str]:
    return {n: f"C{i % 10}" for i, n in enumerate(names)}


def write_summary(folder: Path, out: Path | None = None) -> tuple[Path, str, dict[str, Any]]:
    """``out/summary.json``, ``summary.md`` and ``summary.html`` (with its PNGs) for the runs under ``folder``
    (``out`` defaults to ``folder/summary``); returns the page, the Markdown and the numbers."""
    folder = Path(folder)
    out = Path(out) if out is not None else folder / "summary"
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder of control runs")
    runs, skipped = find_runs(folder, exclude=out)
    if not runs:
        raise ConfigError(f"no finished control run under {folder} (a run folder has control/curve.json)")
    groups = group_runs(runs)
    summary = {"dir": str(folder), **summarise_runs(runs, skipped)}
    table = markdown(summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "summary.md").write_text(table)
    colours = _colours([g["name"] for g in groups])
    plots = []
    if (f := plot_curves(groups, colours, out / "summary-curves.png")) is not None:
        plots.append({"title": "True return against environment steps", "file": f, "note":
                      f"Mean over seeds of the training episodes' true return (the stochastic policy), each seed "
                      f"smoothed by a trailing mean over its last {SMOOTH} logged points and interpolated onto "
                      f"the steps where every seed has data; shaded: min to max across seeds."})
    if (f := plot_finals(summary["settings"], colours, out / "summary-finals.png")) is not None:
        plots.append({"title": "Final true return per seed", "file": f, "note":
                      f"Dots: each seed's deterministic policy at the end of training; bar: the mean over seeds; "
                      f"lines: the true-reward baseline's mean, dashed: {BAR:.0%} of it (the issue's bar)."})
    page = Environment(autoescape=True).from_string(PAGE).render(
        title=folder.name, header=HEADER, rows=table_rows(summary), notes=NOTES, skipped=skipped, plots=plots)
    (out / "summary.html").write_text(page)
    return out / "summary.html", table, summary

