"""A run's results as one HTML page (PNG plots beside it) and a flat ``metrics.json`` of headline numbers.

The page leads with what InstructGPT reports first (section 4): the final policy's gold win rate against
SFT and the base model, then truthfulness and harmlessness (hallucination and refusal rates), the
alignment tax on pretraining text (PPO vs PPO-ptx), and the overoptimisation picture of Gao et al. 2022.
InstructGPT's metadata per policy (fig. 4, app. B) and win rates restricted to each aspect say what the
wins are made of.
The page names its judges at the top (issue #14): the world's gold judge, AI judges (a section each, with
their unparsable replies) and people in ``tiller app`` (``eval/human.py``'s section). The headline's win rates
are the first judge's that has any, and say whose; a project run has no gold judge and no gold section.
Every part of the results may be missing (``RunResults.from_dict`` reads old and sparse files); a section
without data is left out. The page's layout is ``templates/report.html.j2``; this module picks and formats
what goes in it; ``eval/plots.py`` draws the plots.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from tiller.eval.plots import (
    EloRow,
    family_order,
    finite,
    plot_calibration,
    plot_elo,
    plot_family_scores,
    plot_metadata,
    plot_overoptimisation,
    plot_training,
    plot_win_rates,
    title,
)
from tiller.eval.results import (
    CONSTRAINT_BUCKETS,
    Estimate,
    JudgeResults,
    PolicyEval,
    RunResults,
    Sample,
    Scores,
    WinRate,
)
from tiller.runs import atomic_write_text
from tiller.world.judge import METADATA

OVERALL_KEYS = Scores.KEYS  # score, correct, refusal_rate, hallucination_rate, pretrain_loss
N_SAMPLES = 10
# the columns of the metadata table after METADATA's shares: means, the first four of them shares too
MEANS = ("helpful", "truthful", "harmless", "form", "score", "likert")
SHARE_MEANS = MEANS[:4]
ASPECT_COLUMNS = ("helpful", "truthful", "harmless", "form", "constraint")  # evaluate.ASPECTS
TEMPLATES = Path(__file__).parent / "templates"



# ---------------------------------------------------------------------------------------------- helpers


def _pct(x: Any) -> str:
    v = finite(x)
    return "–" if v is None else f"{v:.1%}"


def _fmt(x: Any, digits: int = 3) -> str:
    v = finite(x)
    return "–" if v is None else f"{v:.{digits}f}"


def _slug(name: str) -> str:
    return re.sub(r"\s+", "_", name.strip().lower())


def final_policy(results: RunResults) -> str | None:
    """The name the report calls final: ``results.final`` if set; else the policy whose folder is
    ``policies["final"]`` (the pipeline's alias for the last round); else the last PPO(-ptx) round."""
    policies = results.policies
    names = list(results.evals) or list(policies)
    if results.final is not None:
        return results.final
    if "final" in names or "final" in policies:
        same = [n for n, p in policies.items() if n != "final" and p == policies.get("final")]
        return same[-1] if same else "final"
    rounds = [(int(m.group(1)), n) for n in names if (m := re.fullmatch(r"ppo(?:-ptx)?-r(\d+)", n))]
    if rounds:
        return max(rounds)[1]
    ppo = [n for n in names if n.startswith("ppo") and "noptx" not in n]
    rest = ppo or [n for n in names if n not in ("base", "sft")]
    return rest[-1] if rest else None


def shown_evals(results: RunResults, final: str | None) -> dict[str, PolicyEval]:
    """``evals`` without the ``final`` entry when it is only an alias of another evaluated policy."""
    evals = dict(results.evals)
    if final != "final" and final in evals:
        evals.pop("final", None)
    return evals


def _last_match(names: list[str], pattern: str) -> str | None:
    hits = [n for n in names if re.search(pattern, n)]
    return hits[-1] if hits else None


def elo_rows(results: RunResults) -> list[EloRow]:
    """(name, rating, lo, hi) per policy the gold judge rated; lo and hi are None where there is no usable interval."""
    return rating_rows(results.elo, results.elo_intervals)


def rating_rows(elo: dict[str, float], intervals: dict[str, tuple[float, float]]) -> list[EloRow]:
    """:func:`elo_rows` of any judge's ratings."""
    rows = []
    for name, value in elo.items():
        rating = finite(value)
        if rating is None:
            continue
        lo, hi = (finite(x) for x in intervals.get(name, (None, None)))
        if lo is None or hi is None or not lo - 1e-6 <= rating <= hi + 1e-6:
            lo = hi = None  # an interval from a differently anchored fit would mislead: drop it
        rows.append((name, rating, lo, hi))
    return rows


# ---------------------------------------------------------------------------------------------- judges


def _has_gold(results: RunResults) -> bool:
    return bool(results.win_rates or results.elo or results.aspect_win_rates) or any(
        e.per_family or finite(e.overall.score) is not None for e in results.evals.values())


def judged_by(results: RunResults) -> list[str]:
    """Who judged the run, as ``eval.judges`` named them; results from before issue #14 name none, and were
    judged by the world's gold judge where they hold any gold figure."""
    if results.judged_by:
        return list(results.judged_by)
    return (["world"] if _has_gold(results) else []) + list(results.judges) + (["app"] if results.human else [])


def ai_slugs(results: RunResults) -> dict[str, str]:
    """The key of each AI judge in metrics.json and in its plot's file name: ``ai``, then ``ai-2``, ..."""
    return {spec: "ai" if i == 0 else f"ai-{i + 1}" for i, spec in enumerate(results.judges)}


def judge_phrase(results: RunResults, spec: str) -> str:
    """One judge in words: "the embedded world's gold judge", "an AI judge (openai:URL, model M)", "people in
    tiller app (N labelers, M rankings)"."""
    from tiller.config import ConfigError
    from tiller.judges import parse_judge_spec

    if spec == "world":
        return "the embedded world's gold judge"
    if spec == "app":
        h = results.human
        return "people in tiller app" + (f" ({len(h.labelers)} labelers, {h.n_labels} rankings)" if h else "")
    j = results.judges.get(spec)
    name = j.judge if j is not None and j.judge else spec
    try:
        url, model = parse_judge_spec(name)
    except ConfigError:
        return f"an AI judge ({name})"
    return f"an AI judge (openai:{url}{f', model {model}' if model else ''})"


@dataclass
class Source:
    """The judge the headline's win rates and Elo come from: ``kind`` for the cards' labels."""

    spec: str
    kind: str  # "gold", "AI judge", "people's"
    rates: dict[str, WinRate]  # comparison -> overall win rate
    elo: list[EloRow]


def headline_source(results: RunResults) -> Source | None:
    """The first judge of :func:`judged_by` with a win rate."""
    for spec in judged_by(results):
        if spec == "world":
            src = Source(spec, "gold", {c: f["overall"] for c, f in results.win_rates.items() if "overall" in f},
                         elo_rows(results))
        elif spec == "app" and (h := results.human) is not None:
            src = Source(spec, "people's", {f"{p} vs {h.baseline}": w for p, w in h.win_rates.items()},
                         rating_rows(h.elo, h.elo_intervals))
        elif (j := results.judges.get(spec)) is not None:
            src = Source(spec, "AI judge", {c: f["overall"] for c, f in j.win_rates.items() if "overall" in f},
                         rating_rows(j.elo, j.elo_intervals))
        else:
            continue
        if any(finite(w.rate) is not None for w in src.rates.values()):
            return src
    return None


def _put_rates(put: Any, prefix: str, comp: str, w: WinRate) -> None:
    for v, suffix in ((w.rate, ""), (w.lo, "_lo"), (w.hi, "_hi")):
        put(f"{prefix}{_slug(comp)}{suffix}", v)
    for share in ("wins", "ties", "losses"):
        put(f"{prefix}{_slug(comp)}_{share}", getattr(w, share))


def headline_metrics(results: RunResults, final: str | None = None) -> dict[str, float]:
    """Flat ``{"win_rate/final_vs_sft": .., "refusal_rate/final": .., ...}``; only finite numbers."""
    m: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if (v := finite(value)) is not None:
            m[key] = v

    for comp, fams in results.win_rates.items():
        _put_rates(put, "win_rate/", comp, fams.get("overall", WinRate()))
    for comp, aspects in results.aspect_win_rates.items():
        for aspect, w in aspects.items():
            put(f"aspect_win_rate/{_slug(comp)}/{aspect}", w.rate)
    for name, ev in shown_evals(results, final).items():
        values = {k: ev.overall.get(k) for k in OVERALL_KEYS}
        values["rm_score"] = ev.rm_score.value if ev.rm_score else None
        values |= {f"metadata/{k}": e.value for k, e in ev.metadata.items()}
        values |= {f"aspect_mean/{k}": e.value for k, e in ev.aspect_means.items()}
        for k, v in values.items():
            put(f"{k}/{name}", v)
            if name == final:
                put(f"{k}/final", v)
    for name, rating, _, _ in elo_rows(results):
        put(f"elo/{name}", rating)
        if name == final:
            put("elo/final", rating)
    for rnd, rm in results.rm.items():
        put(f"rm/{rnd}/accuracy", rm.accuracy)
        put(f"rm/{rnd}/gold_accuracy", rm.gold_accuracy)
        put(f"rm/{rnd}/labeler_agreement", rm.labeler_agreement)
    for row in results.headroom.rows if results.headroom else []:
        put(f"headroom/rm_best_of_{row.n}_vs_sft", row.rm.rate)
        put(f"headroom/gold_best_of_{row.n}_vs_sft", row.gold.rate)
    for spec, slug in ai_slugs(results).items():  # each AI judge under its own keys (win_rate/ai/final_vs_sft)
        j = results.judges[spec]
        for comp, fams in j.win_rates.items():
            _put_rates(put, f"win_rate/{slug}/", comp, fams.get("overall", WinRate()))
        for key in ("n_asked", "n_parse_failures", "n_pairs_left_out"):
            put(f"judge/{slug}/{key.removeprefix('n_')}", getattr(j, key))
        for name, rating, _, _ in rating_rows(j.elo, j.elo_intervals):
            put(f"elo/{slug}/{name}", rating)
            if name == final:
                put(f"elo/{slug}/final", rating)
    if (h := results.human) is not None:  # people's, against their baseline (win_rate/human/final_vs_sft)
        for p, w in h.win_rates.items():
            for name in (p, "final") if p == final and p != "final" else (p,):
                _put_rates(put, "win_rate/human/", f"{name} vs {h.baseline}", w)
        for p, e in h.likert.items():
            put(f"likert/human/{p}", e.value)
        for name, rating, _, _ in rating_rows(h.elo, h.elo_intervals):
            put(f"elo/human/{name}", rating)
    put("seconds_total", results.seconds_total)
    return m


# ---------------------------------------------------------------------------------------------- HTML


@dataclass
class Card:
    """A headline number: what it is, its value, and a line of context under it."""

    label: str
    value: str
    sub: str = ""


def _win_card(label: str, w: WinRate | None) -> Card | None:
    if w is None or finite(w.rate) is None:
        return None
    return Card(label, _pct(w.rate), f"95% CI [{_pct(w.lo)}, {_pct(w.hi)}], n={'?' if w.n is None else w.n}")


def _cards(results: RunResults, final: str | None, src: Source | None) -> list[Card]:
    """The headline: win rates against SFT and base (from ``src``, the first judge with win rates), refusal and
    hallucination against SFT, the RM score, the alignment tax (held-out pretraining loss of SFT, PPO without
    ptx and PPO-ptx of the same round) and Elo."""
    ov = {n: e.overall for n, e in shown_evals(results, final).items()}
    name = final or "final"
    cards: list[Card | None] = []
    if src is not None and src.spec == "app":  # people compared each policy with their baseline
        for comp, w in src.rates.items():
            left, right = comp.split(" vs ", 1)
            cards.append(_win_card(f"{name if left == 'final' else left} vs {right}: {src.kind} win rate", w))
    elif src is not None:
        cards += [_win_card(f"{name} vs {other}: {src.kind} win rate", src.rates.get(comp))
                  for comp, other in (("final vs sft", "SFT"), ("final vs base", "base"))]
    for key, label in (("refusal_rate", "refusal rate on harmful prompts"),
                       ("hallucination_rate", "hallucination rate on fact prompts")):
        if final is not None and final in ov and finite(ov[final].get(key)) is not None:
            sft = ov["sft"].get(key) if "sft" in ov else None
            cards.append(Card(label, _pct(ov[final].get(key)), f"SFT {_pct(sft)}"))
    evals = shown_evals(results, final)
    if final in evals and (rm := evals[final].rm_score) is not None and finite(rm.value) is not None:
        sft_rm = evals["sft"].rm_score if "sft" in evals else None
        cards.append(Card(f"mean RM score ({results.rm_scored_by or 'last RM'})", _fmt(rm.value),
                          f"95% CI [{_fmt(rm.lo)}, {_fmt(rm.hi)}]" + (f"; SFT {_fmt(sft_rm.value)}" if sft_rm else "")))
    noptx = _last_match(list(ov), "noptx")
    ptx = f"ppo-ptx-{m.group(1)}" if noptx and (m := re.search(r"(r\d+)$", noptx)) else None
    tax = [(label, n) for label, n in (("SFT", "sft"), ("PPO (no ptx)", noptx), ("PPO-ptx", ptx if ptx in ov else final))
           if n is not None and n in ov and finite(ov[n].pretrain_loss) is not None]
    if tax:
        cards.append(Card("held-out pretraining loss (alignment tax)",
                          " / ".join(_fmt(ov[n].pretrain_loss) for _, n in tax),
                          " / ".join(f"{label} ({n})" for label, n in tax)))
    elo = {n: r for n, r, _, _ in (src.elo if src else elo_rows(results))}
    at = final if final in elo else "final" if "final" in elo else None
    if at is not None:
        cards.append(Card("Elo of the final policy" + ("" if src is None or src.kind == "gold" else f" ({src.kind})"),
                          f"{elo[at]:.0f}", ", ".join(f"{n} {r:.0f}" for n, r in elo.items() if n != at)))
    return [c for c in cards if c is not None]


def policy_table(results: RunResults, evals: dict[str, PolicyEval]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The Policies table: headers and a row of cells per policy, with the columns some policy has a value
    for (a project run has no gold columns; the RM score is the last round's RM's, 95% interval)."""
    def has(key: str) -> bool:
        return any(finite(e.overall.get(key)) is not None for e in evals.values())

    def rm(e: PolicyEval) -> str:
        r = e.rm_score
        return "–" if r is None or finite(r.value) is None else f"{_fmt(r.value)} [{_fmt(r.lo)}, {_fmt(r.hi)}]"

    elo = {n: r for n, r, _, _ in elo_rows(results)}
    cols: list[tuple[str, Any]] = []
    if any(has(k) for k in ("score", "correct", "refusal_rate", "hallucination_rate")):
        cols += [("gold score", lambda n, e: _fmt(e.overall.score)), ("correct", lambda n, e: _pct(e.overall.correct)),
                 ("refusal rate", lambda n, e: _pct(e.overall.refusal_rate)),
                 ("hallucination rate", lambda n, e: _pct(e.overall.hallucination_rate))]
    if has("pretrain_loss"):
        cols.append(("pretraining loss", lambda n, e: _fmt(e.overall.pretrain_loss)))
    if any(e.rm_score is not None for e in evals.values()):
        cols.append((f"RM score ({results.rm_scored_by})" if results.rm_scored_by else "RM score", lambda n, e: rm(e)))
    if elo:
        cols.append(("Elo", lambda n, e: _fmt(elo[n], 0) if n in elo else "–"))
    return [c for c, _ in cols], [(n, [f(n, e) for _, f in cols]) for n, e in evals.items()]


def ai_sections(results: RunResults) -> list[dict[str, Any]]:
    """Per AI judge, what its section shows: who, its counts, the overall win rate of each comparison and Elo."""
    out = []
    for spec, slug in ai_slugs(results).items():
        j: JudgeResults = results.judges[spec]
        out.append({"who": judge_phrase(results, spec), "judge": j, "plot": f"winrates/{slug}",
                    "rows": [(c, f.get("overall", WinRate())) for c, f in j.win_rates.items()],
                    "buckets": any(list(f) != ["overall"] for f in j.win_rates.values()),
                    "elo": rating_rows(j.elo, j.elo_intervals)})
    return out


def _family_rows(evals: dict[str, PolicyEval]) -> list[tuple[str, list[str]]]:
    """Per family, one "score (share correct)" cell per policy."""
    fams = sorted({f for e in evals.values() for f in e.per_family})

    def cell(s: Scores | None) -> str:
        return "–" if s is None or s == Scores() else f"{_fmt(s.score)} ({_pct(s.correct)})"

    return [(f, [cell(e.per_family.get(f)) for e in evals.values()]) for f in fams]


def metadata_rows(evals: dict[str, PolicyEval]) -> list[tuple[str, list[tuple[str, int | None]]]]:
    """Per policy, a ``x% [lo, hi]`` cell and its n for each METADATA share, then for each mean (the gold score
    and the Likert as plain numbers): the table of InstructGPT's metadata."""

    def cell(e: Estimate | None, share: bool) -> tuple[str, int | None]:
        if e is None or finite(e.value) is None:
            return "–", None
        f = _pct if share else functools.partial(_fmt, digits=2)
        return f"{f(e.value)} [{f(e.lo)}, {f(e.hi)}]", e.n

    return [(name, [cell(e.metadata.get(k), True) for k in METADATA]
             + [cell(e.aspect_means.get(k), k in SHARE_MEANS) for k in MEANS])
            for name, e in evals.items() if e.metadata or e.aspect_means]


def aspect_win_rows(results: RunResults) -> list[tuple[str, WinRate, list[WinRate | None]]]:
    """Per comparison: the overall gold win rate (its wins / ties / losses) and the win rate restricted to each
    aspect, for comparisons that have either (files before issue #17 have neither)."""
    rows = []
    for comp in dict.fromkeys([*results.win_rates, *results.aspect_win_rates]):
        ov = results.win_rates.get(comp, {}).get("overall", WinRate())
        aspects = results.aspect_win_rates.get(comp, {})
        if aspects or ov.wins is not None:
            rows.append((comp, ov, [aspects.get(a) for a in ASPECT_COLUMNS]))
    return rows


def _prompt_text(p: Any) -> str:
    if isinstance(p, dict) and "prompt" in p:
        p = p["prompt"]
    if isinstance(p, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
                         for m in p)
    return p if isinstance(p, str) else json.dumps(p)


def pick_samples(base: list[Sample], final: list[Sample], k: int = N_SAMPLES) -> list[tuple[Sample, Sample | None]]:
    """Up to ``k`` of ``base``'s samples, each with ``final``'s answer to the same prompt (or None), taken
    round-robin over families so every family shows."""
    by_prompt = {_prompt_text(s.prompt): s for s in final}
    groups: dict[str, list[tuple[Sample, Sample | None]]] = {}
    for s in base:
        groups.setdefault(s.family, []).append((s, by_prompt.get(_prompt_text(s.prompt))))
    out: list[tuple[Sample, Sample | None]] = []
    queues = list(groups.values())
    while len(out) < k and any(queues):
        for q in queues:
            if q and len(out) < k:
                out.append(q.pop(0))
    return out


def _html_escape(value: Any) -> Any:
    """Every ``{{ }}`` of the template, escaped as ``html.escape`` does (``'`` as ``&#x27;``) rather than
    markupsafe's ``&#39;``, so the page's text is byte for byte what it was before it had a template."""
    return value if isinstance(value, Markup) else Markup(escape(str(value)))


@functools.cache
def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, finalize=_html_escape,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, fmt=_fmt, thousands=lambda x: f"{x:,.0f}", prompt_text=_prompt_text)
    return env


def render_html(results: RunResults, final: str | None, plots: dict[str, str | None],
                human_plots: dict[str, str | None] | None = None) -> str:
    evals = shown_evals(results, final)
    stages = {k: v for k, v in results.stage_seconds.items() if finite(v) is not None}
    sft = results.evals["sft"].samples if "sft" in results.evals else []
    fin = results.evals[final].samples if final is not None and final in results.evals else []
    name = final or "final"
    headroom = results.headroom.rows if results.headroom else []
    meta = [f"created {results.created}" if results.created else "", f"final policy: {final}" if final else ""]
    src = headline_source(results)
    # samples show the gold score, or the last RM's where only the RM scored them (a project run)
    scored = [s for e in results.evals.values() for s in e.samples]
    gold_samples = any(s.score is not None for s in scored) or all(s.rm_score is None for s in scored)
    policy_head, policy_rows = policy_table(results, evals)
    return _env().get_template("report.html.j2").render(
        run=results.run or "run", meta=" · ".join(x for x in meta if x), plots=plots, cards=_cards(results, final, src),
        judged_by=[judge_phrase(results, j) for j in judged_by(results)],
        headline_from=judge_phrase(results, src.spec) if src else "",
        win_tables=[(comp, [(f, fams[f]) for f in family_order(fams)]) for comp, fams in results.win_rates.items()],
        evals=evals, policy_head=policy_head, policy_rows=policy_rows, family_rows=_family_rows(evals),
        metadata=METADATA, metadata_columns=[title(k) for k in (*METADATA, *MEANS)],
        metadata_rows=metadata_rows(evals), aspect_rows=aspect_win_rows(results), aspects=ASPECT_COLUMNS,
        buckets=any(b in fams for fams in results.win_rates.values() for b in CONSTRAINT_BUCKETS),
        headroom=headroom, headroom_rm=results.headroom.rm if results.headroom and results.headroom.rm else "RM",
        rm=results.rm, rm_gold=any(r.gold_accuracy is not None for r in results.rm.values()),
        stages=stages, total=finite(results.seconds_total) or sum(stages.values()) or None,
        # no SFT answers: the final policy's alone
        samples=pick_samples(sft, fin) if sft else pick_samples(fin, []), left="SFT" if sft else name,
        right=name if sft else "", policies=results.policies, ai_judges=ai_sections(results),
        sample_key="score" if gold_samples else "rm_score",
        sample_score="gold score" if gold_samples else "RM score",
        human=results.human, human_plots=human_plots or {},
        gold_curves=any(finite(p.gold_score) is not None for pts in results.curves.values() for p in pts),
    ) + "\n"


def write_report(results: RunResults, out_dir: str | Path) -> Path:
    """Write ``report.html``, its PNGs and ``metrics.json`` into ``out_dir``; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = final_policy(results)
    plots = {
        "winrates": plot_win_rates(results.win_rates, out / "winrates.png"),
        "family_scores": plot_family_scores(shown_evals(results, final), out / "family_scores.png"),
        "metadata": plot_metadata(shown_evals(results, final), out / "metadata.png"),
        "overoptimisation": plot_overoptimisation(results.curves, out / "overoptimisation.png"),
        "training": plot_training(results.training, out / "training.png"),
        "elo": plot_elo(elo_rows(results), out / "elo.png"),
        "calibration": plot_calibration(results.rm, out / "calibration.png"),
    }
    for spec, slug in ai_slugs(results).items():
        plots[f"winrates/{slug}"] = plot_win_rates(results.judges[spec].win_rates, out / f"winrates-{slug}.png",
                                                   judge="AI judge")
    human_plots = None
    if results.human is not None:
        from tiller.eval.human import plot_human

        human_plots = plot_human(results.human, out)
    atomic_write_text(out / "metrics.json", json.dumps(headline_metrics(results, final), indent=2) + "\n")
    atomic_write_text(out / "report.html", render_html(results, final, plots, human_plots))
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
    html = write_report(RunResults.from_dict(results), path.parent)
    typer.echo(f"wrote {html}")
    return html
