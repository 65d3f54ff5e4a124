"""A run's results as one HTML page (PNG plots beside it) and a flat ``metrics.json`` of headline numbers.

The page leads with what InstructGPT reports first (section 4): the final policy's gold win rate against
SFT and the base model, then truthfulness and harmlessness (hallucination and refusal rates), the
alignment tax on pretraining text (PPO vs PPO-ptx), and the overoptimisation picture of Gao et al. 2022.
Every key of ``results`` is optional; a section without data is left out.
"""

from __future__ import annotations

import json
import math
import re
from html import escape
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # the OO API draws with Agg and leaves pyplot's global state alone

from tiller.runs import atomic_write_text

TRAINING_KEYS = ("objective/score", "objective/kl", "loss/policy", "policy/entropy")
OVERALL_KEYS = ("score", "correct", "refusal_rate", "hallucination_rate", "pretrain_loss")
N_SAMPLES = 10


# ---------------------------------------------------------------------------------------------- helpers


def _num(x: Any) -> float | None:
    """A finite float, or None for anything missing, non-numeric or NaN."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _pct(x: Any) -> str:
    v = _num(x)
    return "–" if v is None else f"{v:.1%}"


def _fmt(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return "–" if v is None else f"{v:.{digits}f}"


def _dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _slug(name: str) -> str:
    return re.sub(r"\s+", "_", name.strip().lower())


def final_policy(results: dict) -> str | None:
    """The name the report calls final: ``results["final"]`` if a string; else the policy whose folder is
    ``policies["final"]`` (the pipeline's alias for the last round); else the last PPO(-ptx) round."""
    policies = _dict(results.get("policies"))
    names = list(_dict(results.get("evals"))) or list(policies)
    if isinstance(results.get("final"), str):
        return results["final"]
    if "final" in names or "final" in policies:
        same = [n for n, p in policies.items() if n != "final" and p == policies.get("final")]
        return same[-1] if same else "final"
    rounds = [(int(m.group(1)), n) for n in names if (m := re.fullmatch(r"ppo(?:-ptx)?-r(\d+)", n))]
    if rounds:
        return max(rounds)[1]
    ppo = [n for n in names if n.startswith("ppo") and "noptx" not in n]
    rest = [n for n in names if n not in ("base", "sft")]
    return (ppo or rest or [None])[-1]


def shown_evals(results: dict, final: str | None) -> dict[str, dict]:
    """``evals`` without the ``final`` entry when it is only an alias of another evaluated policy."""
    evals = {n: _dict(e) for n, e in _dict(results.get("evals")).items()}
    if final != "final" and final in evals:
        evals.pop("final", None)
    return evals


def _last_match(names: list[str], pattern: str) -> str | None:
    hits = [n for n in names if re.search(pattern, n)]
    return hits[-1] if hits else None


def elo_rows(results: dict) -> list[tuple[str, float, float | None, float | None]]:
    """(name, rating, lo, hi) from ``elo`` ({name: rating} or {name: {rating, lo, hi}}) and ``elo_intervals``."""
    intervals = _dict(results.get("elo_intervals"))
    rows = []
    for name, v in _dict(results.get("elo")).items():
        d = v if isinstance(v, dict) else {"rating": v}
        rating = _num(d.get("rating"))
        if rating is None:
            continue
        lo, hi = d.get("lo"), d.get("hi")
        iv = intervals.get(name)
        if isinstance(iv, (list, tuple)) and len(iv) == 2:
            lo, hi = iv
        lo, hi = _num(lo), _num(hi)
        if lo is None or hi is None or not lo - 1e-6 <= rating <= hi + 1e-6:
            lo = hi = None  # an interval from a differently anchored fit would mislead: drop it
        rows.append((str(name), rating, lo, hi))
    return rows


def headline_metrics(results: dict, final: str | None = None) -> dict[str, float]:
    """Flat ``{"win_rate/final_vs_sft": .., "refusal_rate/final": .., ...}``; only finite numbers."""
    m: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if (v := _num(value)) is not None:
            m[key] = v

    for comp, fams in _dict(results.get("win_rates")).items():
        ov = _dict(_dict(fams).get("overall"))
        for k, suffix in (("rate", ""), ("lo", "_lo"), ("hi", "_hi")):
            put(f"win_rate/{_slug(comp)}{suffix}", ov.get(k))
    for name, ev in shown_evals(results, final).items():
        overall = _dict(ev.get("overall"))
        for k in OVERALL_KEYS:
            put(f"{k}/{name}", overall.get(k))
            if name == final:
                put(f"{k}/final", overall.get(k))
    for name, rating, _, _ in elo_rows(results):
        put(f"elo/{name}", rating)
        if name == final:
            put("elo/final", rating)
    for rnd, d in _dict(results.get("rm")).items():
        d = _dict(d)
        put(f"rm/{rnd}/accuracy", d.get("eval/accuracy"))
        put(f"rm/{rnd}/gold_accuracy", d.get("gold_accuracy"))
        put(f"rm/{rnd}/labeler_agreement", d.get("data/labeler_agreement"))
    for row in _dict(results.get("headroom")).get("rows") or []:
        for who in ("rm", "gold"):
            put(f"headroom/{who}_best_of_{_dict(row).get('n')}_vs_sft", _dict(_dict(row).get(who)).get("rate"))
    put("seconds_total", results.get("seconds_total"))
    return m


# ---------------------------------------------------------------------------------------------- plots


def _save(fig: Figure, path: Path) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path.name


def plot_win_rates(win_rates: dict, path: Path) -> str | None:
    """Per comparison, horizontal bars of the win rate per family with 95% intervals and the 50% line."""
    comps = {c: {f: d for f, d in _dict(v).items() if _num(_dict(d).get("rate")) is not None}
             for c, v in win_rates.items()}
    comps = {c: v for c, v in comps.items() if v}
    if not comps:
        return None
    heights = [0.3 * len(v) + 0.8 for v in comps.values()]
    fig = Figure(figsize=(7, sum(heights) + 0.3))
    axes = fig.subplots(len(comps), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (comp, fams) in zip(axes, comps.items(), strict=True):
        names = sorted(f for f in fams if f != "overall") + (["overall"] if "overall" in fams else [])
        rates = [fams[f]["rate"] for f in names]
        lo = [max(0.0, r - (_num(fams[f].get("lo")) or r)) for f, r in zip(names, rates, strict=True)]
        hi = [max(0.0, (_num(fams[f].get("hi")) or r) - r) for f, r in zip(names, rates, strict=True)]
        colours = ["#2b6cb0" if f == "overall" else "#90b4de" for f in names]
        ax.barh(range(len(names)), rates, xerr=[lo, hi], color=colours, capsize=3)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.axvline(0.5, color="#444", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:.0%}")
        ax.set_title(comp, loc="left", fontsize=10)
    axes[-1].set_xlabel("gold win rate (ties count half), 95% interval")
    fig.tight_layout()
    return _save(fig, path)


def plot_family_scores(evals: dict, path: Path) -> str | None:
    """Grouped bars: mean gold score per family, one bar per policy."""
    per = {p: _dict(_dict(ev).get("per_family")) for p, ev in evals.items()}
    per = {p: v for p, v in per.items() if v}
    fams = sorted({f for v in per.values() for f in v})
    if not fams:
        return None
    fig = Figure(figsize=(max(6.0, 1.1 * len(fams) + 2), 3.6))
    ax = fig.subplots()
    width = 0.8 / len(per)
    for i, (policy, v) in enumerate(per.items()):
        ys = [_num(_dict(v.get(f)).get("score")) for f in fams]
        xs = [j + (i - (len(per) - 1) / 2) * width for j in range(len(fams))]
        ax.bar(xs, [y if y is not None else 0.0 for y in ys], width, label=policy)
    ax.set_xticks(range(len(fams)), fams)
    ax.set_ylabel("mean gold score")
    ax.legend(fontsize=8, ncols=min(len(per), 4), loc="upper left", bbox_to_anchor=(0, -0.12))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_overoptimisation(curves: dict, path: Path) -> str | None:
    """RM score (left) and gold score (right) against sqrt(KL) from the initial policy, as in Gao et al. 2022."""
    series, oracle = {}, {}  # oracle: best-of-n picked by the gold judge, what a perfect RM would reach
    for name, rows in curves.items():
        rows = [r for r in rows if isinstance(r, dict) and _num(r.get("kl")) is not None]
        pts = [(math.sqrt(max(r["kl"], 0.0)), _num(r.get("rm_score")), _num(r.get("gold_score"))) for r in rows]
        if pts:
            series[name] = sorted(pts)
        if best := sorted((math.sqrt(max(r["kl"], 0.0)), _num(r.get("oracle_gold_score"))) for r in rows
                          if _num(r.get("oracle_gold_score")) is not None):
            oracle[name] = best
    if not series:
        return None
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    for col, (ax, label) in enumerate(zip(axes, ("RM score", "gold score"), strict=True), start=1):
        for name, pts in series.items():
            xy = [(p[0], p[col]) for p in pts if p[col] is not None]
            if xy:
                ax.plot(*zip(*xy, strict=True), marker="o", ms=3, ls="--" if "bon" in name else "-", label=name)
        if col == 2:
            for name, pts in oracle.items():
                ax.plot(*zip(*pts, strict=True), marker=".", ms=3, ls=":", color="grey", label=f"{name}, gold-picked")
        ax.set_xlabel("√KL from the initial policy (√nats)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_training(training: dict, path: Path) -> str | None:
    """The PPO training curves, one panel per metric, one line per run."""
    keys = [k for k in TRAINING_KEYS if any(isinstance(r, dict) and _num(r.get(k)) is not None
                                            for rows in training.values() for r in rows)]
    if not keys:
        return None
    fig = Figure(figsize=(10, 3.2 * math.ceil(len(keys) / 2)))
    axes = fig.subplots(math.ceil(len(keys) / 2), 2, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        for run, rows in training.items():
            xy = [(r["step"], r[key]) for r in rows
                  if isinstance(r, dict) and _num(r.get("step")) is not None and _num(r.get(key)) is not None]
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


def plot_elo(rows: list[tuple[str, float, float | None, float | None]], path: Path) -> str | None:
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
    ax.set_xlabel("Elo (Bradley-Terry fit to gold comparisons; 95% bootstrap interval)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_calibration(rm: dict, path: Path) -> str | None:
    """Reward-model calibration: predicted P(chosen wins) against the observed frequency, per round."""
    rounds = {r: [b for b in _dict(d).get("calibration", []) if isinstance(b, dict)
                  and _num(b.get("predicted")) is not None and _num(b.get("observed")) is not None]
              for r, d in rm.items()}
    rounds = {r: v for r, v in rounds.items() if v}
    if not rounds:
        return None
    fig = Figure(figsize=(4.6, 4.4))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#888", ls="--", lw=1, label="perfect")
    for rnd, bins in rounds.items():
        sizes = [12 + 60 * math.sqrt((_num(b.get("n")) or 1) / max(_num(c.get("n")) or 1 for c in bins))
                 for b in bins]
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], lw=1)
        ax.scatter([b["predicted"] for b in bins], [b["observed"] for b in bins], s=sizes, label=str(rnd))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(preferred wins)", ylabel="observed frequency")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- HTML

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1a202c;max-width:1100px;margin:2rem auto;
padding:0 1rem;background:#fafafa}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:2px solid #e2e8f0;padding-bottom:.2rem}
.meta{color:#4a5568}.note{color:#4a5568;font-size:.9rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:.8rem}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:.7rem 1rem}
.card .label{font-size:.85rem;color:#4a5568}.card .value{font-size:1.5rem;font-weight:600}
.card .sub{font-size:.8rem;color:#718096}
table{border-collapse:collapse;background:#fff;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #e2e8f0;padding:.3rem .6rem;vertical-align:top}th{background:#edf2f7;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}tr:nth-child(even) td{background:#f7fafc}
figure{margin:1rem 0}img{max-width:100%;border:1px solid #e2e8f0;background:#fff}
figcaption{font-size:.85rem;color:#4a5568}
pre{white-space:pre-wrap;margin:0;font:inherit}.samples td{max-width:340px}
"""


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1, cls: str = "") -> str:
    """Cells are already-escaped HTML; columns from ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _card(label: str, value: str, sub: str = "") -> str:
    return (f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{escape(value)}</div>'
            f'<div class="sub">{escape(sub)}</div></div>')


def _win_card(label: str, wr: Any) -> str:
    ov = _dict(_dict(wr).get("overall"))
    if _num(ov.get("rate")) is None:
        return ""
    return _card(label, _pct(ov["rate"]), f"95% CI [{_pct(ov.get('lo'))}, {_pct(ov.get('hi'))}], n={ov.get('n', '?')}")


def _headline(results: dict, final: str | None) -> str:
    evals, wins = shown_evals(results, final), _dict(results.get("win_rates"))
    ov = {n: _dict(e.get("overall")) for n, e in evals.items()}
    cards = [_win_card(f"{final or 'final'} vs SFT: gold win rate", wins.get("final vs sft")),
             _win_card(f"{final or 'final'} vs base: gold win rate", wins.get("final vs base"))]
    for key, label in (("refusal_rate", "refusal rate on harmful prompts"),
                       ("hallucination_rate", "hallucination rate on fact prompts")):
        if final in ov and _num(ov[final].get(key)) is not None:
            cards.append(_card(label, _pct(ov[final][key]), f"SFT {_pct(ov.get('sft', {}).get(key))}"))
    noptx = _last_match(list(ov), "noptx")
    ptx = f"ppo-ptx-{m.group(1)}" if noptx and (m := re.search(r"(r\d+)$", noptx)) else None
    tax = [(label, n) for label, n in (("SFT", "sft"), ("PPO (no ptx)", noptx),
                                       ("PPO-ptx", ptx if ptx in ov else final))
           if n in ov and _num(ov[n].get("pretrain_loss")) is not None]
    if tax:
        cards.append(_card("held-out pretraining loss (alignment tax)",
                           " / ".join(_fmt(ov[n]["pretrain_loss"]) for _, n in tax),
                           " / ".join(f"{label} ({n})" for label, n in tax)))
    elo = {n: r for n, r, _, _ in elo_rows(results)}
    if final in elo:
        cards.append(_card("Elo of the final policy", f"{elo[final]:.0f}",
                           ", ".join(f"{n} {r:.0f}" for n, r in elo.items() if n != final)))
    cards = [c for c in cards if c]
    return '<div class="cards">' + "".join(cards) + "</div>" if cards else '<p class="note">No evaluation results.</p>'


def _policy_tables(results: dict, final: str | None) -> str:
    evals = shown_evals(results, final)
    if not evals:
        return ""
    elo = {n: r for n, r, _, _ in elo_rows(results)}
    rows = [[escape(n)] + [(_pct if k not in ("score", "pretrain_loss") else _fmt)(_dict(e.get("overall")).get(k))
                           for k in OVERALL_KEYS] + [f"{elo[n]:.0f}" if n in elo else "–"]
            for n, e in ((n, _dict(e)) for n, e in evals.items())]
    out = "<h2>Policies</h2>" + _table(["policy", "gold score", "correct", "refusal rate", "hallucination rate",
                                        "pretraining loss", "Elo"], rows)
    fams = sorted({f for e in evals.values() for f in _dict(_dict(e).get("per_family"))})
    if fams:
        def cell(d: dict) -> str:
            return f"{_fmt(d.get('score'))} ({_pct(d.get('correct'))})" if d else "–"

        rows = [[escape(f)] + [cell(_dict(_dict(_dict(e).get("per_family")).get(f))) for e in evals.values()]
                for f in fams]
        out += ("<h3>Gold score per family (share correct)</h3>"
                + _table(["family"] + [escape(n) for n in evals], rows))
    return out


def _win_tables(results: dict) -> str:
    out = []
    for comp, fams in _dict(results.get("win_rates")).items():
        names = sorted(f for f in _dict(fams) if f != "overall") + (["overall"] if "overall" in _dict(fams) else [])
        rows = [[escape(f), _pct(d.get("rate")), f"[{_pct(d.get('lo'))}, {_pct(d.get('hi'))}]",
                 escape(str(d.get("n", "–"))), _pct(d.get("ties"))] for f, d in ((f, _dict(fams[f])) for f in names)]
        out.append(f"<h3>{escape(comp)}</h3>" + _table(["family", "win rate", "95% CI", "n", "ties"], rows))
    return "<h2>Win rates (gold judge)</h2>" + "".join(out) if out else ""


def _rm_table(results: dict) -> str:
    rm = _dict(results.get("rm"))
    if not rm:
        return ""
    rows = [[escape(str(r)), _pct(_dict(d).get("eval/accuracy")), _pct(_dict(d).get("data/labeler_agreement")),
             _pct(_dict(d).get("gold_accuracy"))] for r, d in rm.items()]
    return ("<h2>Reward models</h2>" + _table(["round", "accuracy on held-out labels", "labeler agreement",
                                               "gold accuracy"], rows)
            + '<p class="note">Held-out accuracy is measured against noisy labels, so labeler agreement is a '
              "rough ceiling on it (InstructGPT reports 72.6% inter-labeler agreement); gold accuracy compares against the "
              "world's judge.</p>")


def _headroom_table(results: dict) -> str:
    h = _dict(results.get("headroom"))
    rows = [_dict(r) for r in h.get("rows") or []]
    if not rows:
        return ""

    def cell(d: dict) -> str:
        return f"{_pct(d.get('rate'))} [{_pct(d.get('lo'))}, {_pct(d.get('hi'))}]"

    body = [[escape(str(r.get("n"))), _fmt(r.get("kl"), 2), cell(_dict(r.get("rm"))), cell(_dict(r.get("gold")))]
            for r in rows]
    rm = escape(str(h.get("rm", "RM")))
    return ("<h3>Headroom: best-of-n from SFT against one SFT answer</h3>"
            + _table(["n", "KL (nats)", f"picked by {rm}", "picked by the gold judge"], body)
            + f'<p class="note">The same n SFT answers per held-out prompt, the best chosen by {rm} or by the gold '
              "judge. The gold-judge column is what a perfect reward model would reach at best-of-n's KL, a rough "
              "ceiling for a policy that moves as far from SFT; the gap between the columns is what the RM's errors "
              "cost.</p>")


def _timings(results: dict) -> str:
    stages = {k: v for k, v in _dict(results.get("stage_seconds")).items() if _num(v) is not None}
    total = _num(results.get("seconds_total")) or sum(stages.values()) or None
    if not stages and total is None:
        return ""
    rows = [[escape(k), f"{v:,.0f}", _pct(v / total) if total else "–"] for k, v in stages.items()]
    rows.append(["<b>total</b>", f"<b>{total:,.0f}</b>" if total else "–", ""])
    return "<h2>Stage timings</h2>" + _table(["stage", "seconds", "share"], rows)


def _prompt_text(p: Any) -> str:
    if isinstance(p, dict) and "prompt" in p:
        p = p["prompt"]
    if isinstance(p, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
                         for m in p)
    return p if isinstance(p, str) else json.dumps(p)


def pick_samples(base: list[dict], final: list[dict], k: int = N_SAMPLES) -> list[tuple[dict, dict | None]]:
    """Up to ``k`` of ``base``'s samples, each with ``final``'s answer to the same prompt (or None), taken
    round-robin over families so every family shows."""
    by_prompt = {_prompt_text(s.get("prompt")): s for s in final if isinstance(s, dict)}
    pairs = [(s, by_prompt.get(_prompt_text(s.get("prompt")))) for s in base if isinstance(s, dict)]
    groups: dict[str, list[tuple[dict, dict | None]]] = {}
    for pair in pairs:
        groups.setdefault(str(pair[0].get("family", "")), []).append(pair)
    out: list[tuple[dict, dict | None]] = []
    queues = list(groups.values())
    while len(out) < k and any(queues):
        for q in queues:
            if q and len(out) < k:
                out.append(q.pop(0))
    return out


def _samples(results: dict, final: str | None) -> str:
    evals = _dict(results.get("evals"))
    sft = _dict(evals.get("sft")).get("samples") or []
    fin = _dict(evals.get(final)).get("samples") or [] if final else []
    pairs = pick_samples(sft, fin) if sft else pick_samples(fin, [])  # no SFT: the final policy alone
    if not pairs:
        return ""
    left, right = ("SFT", final or "final") if sft else (final or "final", "")

    def ans(s: dict | None) -> str:
        return "–" if s is None else f"<pre>{escape(str(s.get('response', '')))}</pre><b>{_fmt(s.get('score'), 2)}</b>"

    rows = [[escape(str(a.get("family", ""))), f"<pre>{escape(_prompt_text(a.get('prompt')))}</pre>", ans(a)]
            + ([ans(b)] if right else []) for a, b in pairs]
    header = ["family", "prompt", f"{escape(left)} (gold score)"] + ([f"{escape(right)} (gold score)"] if right else [])
    return "<h2>Sample answers</h2>" + _table(header, rows, numeric_from=99, cls="samples")


def render_html(results: dict, final: str | None, plots: dict[str, str | None]) -> str:
    def fig(key: str, caption: str) -> str:
        if not plots.get(key):
            return ""
        return (f'<figure><img src="{escape(str(plots[key]))}" alt="{escape(caption)}">'
                f"<figcaption>{escape(caption)}</figcaption></figure>")

    run = escape(str(results.get("run", "run")))
    meta = " · ".join(escape(x) for x in (f"created {results['created']}" if results.get("created") else "",
                                         f"final policy: {final}" if final else "") if x)
    policies = _dict(results.get("policies"))
    paths = _table(["policy", "folder"], [[escape(k), escape(str(v))] for k, v in policies.items()],
                   numeric_from=99) if policies else ""
    parts = [
        f"<h1>tiller report: {run}</h1><p class='meta'>{meta}</p>",
        "<h2>Headline</h2>", _headline(results, final),
        fig("winrates", "Gold win rate per family with 95% intervals; the dashed line is a tie (50%)."),
        fig("elo", "Elo ratings from all-pairs gold comparisons."),
        _win_tables(results), _policy_tables(results, final),
        fig("family_scores", "Mean gold score per prompt family."),
        "<h2>Optimisation</h2>" if plots.get("overoptimisation") or plots.get("training") or results.get("headroom")
        else "",
        fig("overoptimisation", "RM score and gold score against √KL from the initial policy, for RL and best-of-n "
                                "(Gao et al. 2022): where gold turns down while the RM keeps rising, the policy is "
                                "exploiting the RM."),
        _headroom_table(results),
        fig("training", "PPO training curves."),
        _rm_table(results), fig("calibration", "Reward-model calibration on held-out comparisons."),
        _timings(results), _samples(results, final),
        "<h2>Policies on disk</h2>" + paths if paths else "",
    ]
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>tiller report: {run}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(results: dict, out_dir: str | Path) -> Path:
    """Write ``report.html``, its PNGs and ``metrics.json`` into ``out_dir``; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = _dict(results)
    final = final_policy(results)
    plots = {
        "winrates": plot_win_rates(_dict(results.get("win_rates")), out / "winrates.png"),
        "family_scores": plot_family_scores(shown_evals(results, final), out / "family_scores.png"),
        "overoptimisation": plot_overoptimisation(_dict(results.get("curves")), out / "overoptimisation.png"),
        "training": plot_training(_dict(results.get("training")), out / "training.png"),
        "elo": plot_elo(elo_rows(results), out / "elo.png"),
        "calibration": plot_calibration(_dict(results.get("rm")), out / "calibration.png"),
    }
    atomic_write_text(out / "metrics.json", json.dumps(headline_metrics(results, final), indent=2) + "\n")
    atomic_write_text(out / "report.html", render_html(results, final, plots))
    return out / "report.html"


def report_cmd(run: str) -> Path:
    """``tiller report --run NAME``: re-render ``runs/NAME/report/`` from its ``results.json``."""
    import typer

    from tiller.runs import run_dir

    path = run_dir(run) / "report" / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        typer.echo(f"error: {path} does not exist (run `tiller run --run {run}` first)", err=True)
        raise typer.Exit(2) from None
    except json.JSONDecodeError as e:
        typer.echo(f"error: {path}:{e.lineno}: not valid JSON ({e.msg})", err=True)
        raise typer.Exit(2) from None
    if not isinstance(results, dict):
        typer.echo(f"error: {path}:1: expected a JSON object of results", err=True)
        raise typer.Exit(2)
    html = write_report(results, path.parent)
    typer.echo(f"wrote {html}")
    return html
