"""``tiller control report``: one HTML page with PNG plots of a control run, and of its true-reward baseline.

What Christiano et al. 2017 show for MuJoCo (fig. 1): the TRUE return of the policy trained on the learned
reward against environment steps, beside the same RL on the true reward; here also against the labels used
so far, the predictor's held-out accuracy as labels come in, and what the behaviour looked like (a strip of
frames of early and late clips, when ``tiller.control.render`` can render here). Everything is read from the
finished runs' ``control/curve.json`` and ``control/clips.npz``; nothing is recomputed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from jinja2 import Environment
from matplotlib.figure import Figure

from tiller.config import ConfigError

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>tiller control: {{ title }}</title>
<style>body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%}.note{color:#666}</style></head>
<body><h1>Deep RL from preferences: {{ title }}</h1>
<p class="note">True return: the environment's own reward, which the learned-reward policy never saw
(Christiano et al. 2017, fig. 1). Final: the deterministic policy over the evaluation episodes; random: uniform
random actions over the same episodes.</p>
<table><tr><th>run</th><th>env</th><th>reward</th><th>steps</th><th>labels</th><th>final true return</th>
<th>random policy</th><th>predictor held-out acc.</th><th>time</th></tr>
{% for r in rows %}<tr><td>{{ r.name }}</td><td>{{ r.env }}</td><td>{{ r.reward }}</td><td>{{ r.steps }}</td>
<td>{{ r.labels }}</td><td>{{ r.final }}</td><td>{{ r.random }}</td><td>{{ r.accuracy }}</td><td>{{ r.time }}</td></tr>
{% endfor %}</table>
{% for p in plots %}<h2>{{ p.title }}</h2><img src="{{ p.file }}" alt="{{ p.title }}">{% endfor %}
<h2>Clips</h2>
{% if strips %}{% for s in strips %}<p>{{ s.caption }}<br><img src="{{ s.file }}" alt="{{ s.caption }}"></p>{% endfor %}
{% else %}<p class="note">{{ clips_note }}</p>{% endif %}
</body></html>
"""


def load_run(run: Path) -> dict[str, Any]:
    """A finished run's ``control/curve.json`` (run: the run folder, or its ``control`` folder)."""
    folder = run if (run / "curve.json").is_file() else run / "control"
    f = folder / "curve.json"
    if not f.is_file():
        raise ConfigError(f"no finished control run in {run} ({f} is missing: run `tiller control run` first)")
    data = json.loads(f.read_text())
    data.update(name=run.name if folder != run else run.parent.name, folder=str(folder))
    return data


def finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _label(run: dict[str, Any]) -> str:
    return f"{run['name']} ({run['reward']} reward)"


def series(run: dict[str, Any], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(r[x], r[y]) for r in run["curve"] if finite(r.get(x)) is not None and finite(r.get(y)) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def save_png(fig: Figure, path: Path) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path.name


def plot_return_vs_steps(runs: list[dict[str, Any]], path: Path) -> str | None:
    """Training episodes' true return against env steps, per run (dots); the final deterministic policy's as
    a circle; the random policy's return as a dashed line."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    drawn = False
    for run in runs:
        xs, ys = series(run, "step", "true_return")
        if not xs:
            continue
        line = ax.plot(xs, ys, ".-", label=_label(run))[0]
        final = finite(run["metrics"].get("eval/true_return"))
        if final is not None:  # the deterministic policy at the end of training
            ax.plot([finite(run["metrics"].get("steps")) or xs[-1]], [final], "o", ms=8, mfc="none",
                    color=line.get_color())
        drawn = True
    randoms = [r for run in runs if (r := finite(run["metrics"].get("eval/random_return"))) is not None]
    if randoms:
        ax.axhline(randoms[0], ls="--", color="grey", label="random policy")
    if not drawn:
        return None
    ax.set_xlabel("environment steps")
    ax.set_ylabel("true episode return")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_return_vs_labels(runs: list[dict[str, Any]], path: Path) -> str | None:
    """True return against the labels used so far (learned-reward runs); a true-reward run, which uses
    none, as a horizontal line at its final return."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    drawn = False
    for run in runs:
        if run["reward"] == "learned":
            xs, ys = series(run, "labels", "true_return")
            if xs:
                ax.plot(xs, ys, ".-", label=_label(run))
                drawn = True
        elif (final := finite(run["metrics"].get("eval/true_return"))) is not None:
            ax.axhline(final, ls=":", color="black", label=f"{_label(run)}, final")
    if not drawn:
        return None
    ax.set_xlabel("labels (comparisons) used")
    ax.set_ylabel("true episode return")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_accuracy_vs_labels(runs: list[dict[str, Any]], path: Path) -> str | None:
    """The ensemble's accuracy on held-out comparisons (sec. 2.2.3's 1/e split) as labels come in."""
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    drawn = False
    for run in runs:
        xs, ys = series(run, "labels", "val_accuracy")
        if xs:
            ax.plot(xs, ys, ".-", label=_label(run))
            drawn = True
    if not drawn:
        return None
    ax.axhline(0.5, ls="--", color="grey")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("labels (comparisons) used")
    ax.set_ylabel("held-out pair accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def clip_strips(run: dict[str, Any], out: Path, per_group: int = 2) -> tuple[list[dict[str, str]], str]:
    """PNG strips of the run's first (random-policy) and last clips, or none and the reason why."""
    from tiller.control.store import load_segments

    clips = Path(run["folder"]) / "clips.npz"
    if not clips.is_file():
        return [], f"{run['name']} saved no clips"
    segs, data = load_segments(clips)
    n_early = int(data["early"]) if "early" in data.files else 0
    chosen = [("random policy, labelled first", s) for s in segs[:n_early][:per_group]]
    chosen += [("final policy, most recent", s) for s in segs[n_early:][-per_group:]]
    if not chosen or chosen[0][1].states is None:
        return [], f"{run['env']} clips keep no simulator states: nothing to render"
    try:
        from tiller.control.render import render_strip

        strips = []
        for i, (caption, seg) in enumerate(chosen):
            png = render_strip(seg.env_id, seg.states, out / f"clip-{run['name']}-{i}.png",
                               env_kwargs=run.get("env_kwargs"))
            ret = float(seg.true_rewards.sum())
            strips.append({"caption": f"{run['name']}: {caption} ({seg.id}, true return {ret:.1f})",
                           "file": png.name})
        return strips, ""
    except Exception as e:  # no headless GL here, or no renderer: the page says so instead of failing
        return [], f"clip thumbnails not rendered: {type(e).__name__}: {e}"


def _row(run: dict[str, Any]) -> dict[str, str]:
    m = run["metrics"]

    def num(key: str, fmt: str) -> str:
        v = finite(m.get(key))
        return "-" if v is None else format(v, fmt)

    final = num("eval/true_return", ".1f")
    if final != "-":
        final += f" ± {num('eval/true_return_std', '.1f')}"
    secs = finite(m.get("seconds"))
    return {"name": run["name"], "env": run["env"], "reward": run["reward"], "steps": num("steps", ".0f"),
            "labels": num("labels/used", ".0f") if run["reward"] == "learned" else "-", "final": final,
            "random": num("eval/random_return", ".1f"), "accuracy": num("predictor/val_accuracy", ".3f"),
            "time": "-" if secs is None else f"{secs / 60:.1f} min"}


def write_report(runs: list[Path], out: Path) -> Path:
    """``out/report.html`` (and its PNGs) for one run or a learned run beside its true-reward baseline."""
    loaded = [load_run(r) for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for title, fn, name in (("True return against environment steps", plot_return_vs_steps, "return-steps.png"),
                            ("True return against labels used", plot_return_vs_labels, "return-labels.png"),
                            ("Predictor held-out accuracy", plot_accuracy_vs_labels, "accuracy-labels.png")):
        if (f := fn(loaded, out / name)) is not None:
            plots.append({"title": title, "file": f})
    strips: list[dict[str, str]] = []
    notes = []
    for run in loaded:
        s, note = clip_strips(run, out)
        strips += s
        if note:
            notes.append(note)
    page = Environment(autoescape=True).from_string(PAGE).render(
        title=" vs ".join(r["name"] for r in loaded), rows=[_row(r) for r in loaded], plots=plots,
        strips=strips, clips_note="; ".join(notes) or "no clips")
    (out / "report.html").write_text(page)
    return out / "report.html"
