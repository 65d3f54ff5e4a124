"""Gold-judged evaluation on held-out prompts: scores per family, refusal and hallucination rates, win rates,
and InstructGPT's metadata per policy (fig. 4, app. B) with win rates restricted to each aspect; optionally an
AI judge's win rates beside the gold ones (``eval.judges``, issue #14).

Only evaluation imports the world's judge; it stands in for the human evaluators of InstructGPT section 4
(win rates against a baseline on prompts from held-out users).
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tiller.config import ConfigError
from tiller.eval.results import CONSTRAINT_BUCKETS
from tiller.judges import JudgeReport, PairwiseJudge, judge_pairs
from tiller.models import load_policy
from tiller.rollout import generate
from tiller.world.judge import EPS, METADATA, SCORE_RANGE, GoldJudge
from tiller.world.judge import metadata as answer_metadata

# The aspects a win rate is restricted to (issue #17): each compared on its own, higher wins.
ASPECTS = ("helpful", "truthful", "harmless", "form", "constraint")
# What each mean of ``policy_metadata``'s ``aspect_means`` may range over, so its interval is clipped there.
MEAN_BOUNDS = {"helpful": (0.0, 1.0), "truthful": (0.0, 1.0), "harmless": (0.0, 1.0), "form": (0.0, 1.0),
               "score": SCORE_RANGE, "likert": (1.0, 7.0)}
Z95 = 1.96


@dataclass
class PolicyAnswers:
    name: str
    prompts: list[Any]
    families: list[str]
    texts: list[str]


@dataclass
class EvalResult:
    policy: str
    per_family: dict[str, dict[str, float]] = field(default_factory=dict)
    overall: dict[str, float] = field(default_factory=dict)
    win_rate: dict[str, dict[str, float]] = field(default_factory=dict)  # family|bucket -> {rate, lo, hi, n, ...}
    baseline: str | None = None
    samples: list[dict] = field(default_factory=list)
    headroom: list[dict] = field(default_factory=list)  # rows of eval.curves.headroom
    # policy_metadata of the policy's answers and of the baseline's: key -> {value, lo, hi, n}
    metadata: dict[str, dict[str, float]] = field(default_factory=dict)
    aspect_means: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline_metadata: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline_aspect_means: dict[str, dict[str, float]] = field(default_factory=dict)
    aspect_win_rate: dict[str, dict[str, float]] = field(default_factory=dict)  # aspect -> {rate, lo, hi, n, ties}
    # an AI judge against the baseline (eval.judges): JudgeReport.to_json + template; empty for the gold judge alone
    judge: dict[str, Any] = field(default_factory=dict)
    judge_win_rate: dict[str, dict[str, float]] = field(default_factory=dict)  # as win_rate, + left_out per bucket

    def to_json(self) -> dict:
        return {"policy": self.policy, "baseline": self.baseline, "per_family": self.per_family,
                "overall": self.overall, "win_rate": self.win_rate, "headroom": self.headroom,
                "samples": self.samples[:50], "metadata": self.metadata, "aspect_means": self.aspect_means,
                "baseline_metadata": self.baseline_metadata, "baseline_aspect_means": self.baseline_aspect_means,
                "aspect_win_rate": self.aspect_win_rate, "judge": self.judge, "judge_win_rate": self.judge_win_rate}


def test_prompts(world, n_per_family: int, seed: int, split: str = "test") -> tuple[list[Any], list[str]]:
    by_family: dict[str, list[Any]] = defaultdict(list)
    for p in world.prompts:
        if p["split"] == split:
            by_family[p["family"]].append(p["prompt"])
    prompts, families = [], []
    rng = random.Random(seed)
    for fam in sorted(by_family):
        chosen = by_family[fam][:]
        rng.shuffle(chosen)
        for pr in chosen[:n_per_family]:
            prompts.append(pr)
            families.append(fam)
    return prompts, families


def answer(policy: str, prompts: list[Any], families: list[str], temperature: float, seed: int,
           max_new_tokens: int = 48) -> PolicyAnswers:
    model, tok = load_policy(policy, trainable=False)
    texts = generate(model, tok, prompts, temperature=temperature, seed=seed, max_new_tokens=max_new_tokens).texts
    return PolicyAnswers(str(policy), prompts, families, texts)


def mean_ci(xs: list[float], bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float, float]:
    """Mean with a normal-approximation 95% interval clipped to ``bounds`` (the range the values can take;
    outcomes in {0, 0.5, 1} for win rates)."""
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / max(n - 1, 1))
    half = Z95 * sd / math.sqrt(n)
    return m, max(bounds[0], m - half), min(bounds[1], m + half)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float, float]:
    """Share ``k / n`` with its Wilson score interval: unlike the normal approximation it stays inside [0, 1]
    and is not empty at 0 or n of n, which matters for rare failures (harmful compliance) on few prompts."""
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return p, max(0.0, centre - half), min(1.0, centre + half)


def policy_metadata(aspects: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """InstructGPT's metadata (fig. 4, app. B) of one policy's judged answers (``judge.aspects`` dicts):
    ``metadata`` holds each ``METADATA`` share over the answers it applies to (Wilson interval),
    ``aspect_means`` the mean helpful, truthful, harmless, form, gold score and 1-7 Likert (normal interval).
    Items with no answer to apply to are left out. Each entry is ``{value, lo, hi, n}``."""
    metas = [answer_metadata(a) for a in aspects]
    rates = {}
    for key in METADATA:
        hits = [bool(m[key]) for m in metas if m[key] is not None]
        if hits:
            rates[key] = _estimate(wilson(sum(hits), len(hits)), len(hits))
    values = {k: [float(a[k]) for a in aspects] for k in ("helpful", "truthful", "harmless", "form")}
    values["score"] = [GoldJudge.combine(a) for a in aspects]
    values["likert"] = [float(m["likert"]) for m in metas]
    means = {k: _estimate(mean_ci(xs, MEAN_BOUNDS[k]), len(xs)) for k, xs in values.items() if xs}
    return {"metadata": rates, "aspect_means": means}


def _estimate(ci: tuple[float, float, float], n: int) -> dict[str, float]:
    return {"value": ci[0], "lo": ci[1], "hi": ci[2], "n": n}


def outcome_summary(outcomes: list[float]) -> dict[str, float]:
    """Win rate of per-prompt outcomes in {1, 0.5, 0} (ties count half) with its 95% interval, and the shares
    of wins, ties and losses: a 55% win rate is a different finding with 10% ties than with 80%."""
    n = len(outcomes)
    m, lo, hi = mean_ci(outcomes)
    return {"rate": m, "lo": lo, "hi": hi, "n": n, "ties": sum(x == 0.5 for x in outcomes) / n,
            "wins": sum(x == 1.0 for x in outcomes) / n, "losses": sum(x == 0.0 for x in outcomes) / n}


def aspect_outcome(x: float, y: float) -> float:
    """1 if aspect value ``x`` is higher than ``y``, 0.5 if equal, 0 if lower (bools count as 0 and 1)."""
    d = float(x) - float(y)
    return 0.5 if abs(d) < EPS else float(d > 0)


def aspect_win_rates(xs: list[dict[str, Any]], ys: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Win rates of answers ``xs`` over ``ys`` (``judge.aspects`` of the same prompts, in order) restricted to
    each of ``ASPECTS``: which aspects a gold win is made of. ``constraint`` counts only prompts that have one
    (elsewhere both meet it and every prompt would be a tie)."""
    out = {}
    for aspect in ASPECTS:
        outcomes = [aspect_outcome(x[aspect], y[aspect]) for x, y in zip(xs, ys, strict=True)
                    if aspect != "constraint" or x.get("has_constraint")]
        if outcomes:
            out[aspect] = outcome_summary(outcomes)
    return out


def bucket_win_rates(families: list[str], constrained: list[bool], outcomes: list[float]) -> dict[str, dict[str, float]]:
    """``outcome_summary`` per family, per constraint bucket (prompts with an explicit constraint and without:
    the latter compare with worlds built before constraints existed) and ``overall``."""
    buckets: dict[str, list[float]] = {f: [] for f in dict.fromkeys(families)}
    buckets.update({b: [] for b in CONSTRAINT_BUCKETS})
    buckets["overall"] = []
    for fam, c, o in zip(families, constrained, outcomes, strict=True):
        for b in (fam, CONSTRAINT_BUCKETS[0] if c else CONSTRAINT_BUCKETS[1], "overall"):
            buckets[b].append(o)
    return {b: outcome_summary(xs) for b, xs in buckets.items() if xs}


def judge_all(judge, ans: PolicyAnswers) -> list[dict[str, Any]]:
    """``judge.aspects`` of every answer, in order: what metadata and aspect win rates are computed from."""
    return [judge.aspects(p, t) for p, t in zip(ans.prompts, ans.texts, strict=True)]


def judge_answers(judge, ans: PolicyAnswers) -> tuple[dict[str, dict[str, float]], dict[str, float], list[dict]]:
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    rows = []
    for p, fam, t in zip(ans.prompts, ans.families, ans.texts, strict=True):
        a = judge.aspects(p, t)
        s = judge.combine(a)
        for bucket in (fam, "overall"):
            per[bucket]["score"].append(s)
            per[bucket]["correct"].append(float(a["correct"]))
            if fam == "harmful":
                per[bucket]["refusal_rate"].append(float(a["refusal"]))
            if fam == "facts":
                per[bucket]["hallucination_rate"].append(float(a["hallucination"]))
        rows.append({"family": fam, "prompt": p, "response": t, "score": s})
    summary = {f: {k: sum(v) / len(v) for k, v in d.items()} for f, d in per.items()}
    overall = summary.pop("overall")
    return summary, overall, rows


def win_rates(judge, a: PolicyAnswers, b: PolicyAnswers) -> dict[str, dict[str, float]]:
    """Gold win rate of ``a`` over ``b`` per family, per constraint bucket and overall (ties count half), with
    95% intervals and the shares of wins, ties and losses (:func:`bucket_win_rates`)."""
    outcomes = [judge.compare(p, x, y) for p, x, y in zip(a.prompts, a.texts, b.texts, strict=True)]
    constrained = [bool(judge.aspects(p, x)["has_constraint"]) for p, x in zip(a.prompts, a.texts, strict=True)]
    return bucket_win_rates(a.families, constrained, outcomes)


def judge_win_rates(families: list[str], constrained: list[bool],
                    outcomes: list[float | None]) -> dict[str, dict[str, float]]:
    """:func:`bucket_win_rates` of an AI judge's outcomes over the pairs it judged (both orders parsed), each
    bucket with ``left_out``: its pairs without an outcome (a bucket with none judged has only ``n: 0``)."""
    kept = [(f, c, o) for f, c, o in zip(families, constrained, outcomes, strict=True) if o is not None]
    rates = bucket_win_rates([f for f, _, _ in kept], [c for _, c, _ in kept], [o for _, _, o in kept])
    left: Counter[str] = Counter()
    for fam, c, o in zip(families, constrained, outcomes, strict=True):
        for b in (fam, CONSTRAINT_BUCKETS[0] if c else CONSTRAINT_BUCKETS[1], "overall"):
            rates.setdefault(b, {"n": 0})
            left[b] += o is None
    order = [*dict.fromkeys(families), *CONSTRAINT_BUCKETS, "overall"]  # as bucket_win_rates orders them
    return {b: {**rates[b], "left_out": left[b]} for b in order if b in rates}


def judge_report_json(judge: PairwiseJudge, report: JudgeReport, max_failure_share: float) -> dict[str, Any]:
    template = getattr(judge, "template_path", None)
    return {**report.to_json(), "template": str(template) if template else None,
            "max_failure_share": max_failure_share}


@torch.no_grad()
def corpus_loss(policy: str, corpus_valid: Path, max_docs: int = 400, block: int = 128) -> float:
    """Mean next-token loss on held-out pretraining text (the alignment tax of PPO vs PPO-ptx)."""
    from tiller.stages.pretrain import pack, read_corpus

    model, tok = load_policy(policy, trainable=False)
    model.eval()
    x = pack(read_corpus(corpus_valid)[:max_docs], tok, block)  # (n, block), packed as pretraining packs them
    n = len(x)
    total = 0.0
    for i in range(0, n, 32):
        xb = x[i : i + 32].to(model.device)
        total += model(input_ids=xb, labels=xb).loss.item() * len(xb)
    return total / max(n, 1)


def evaluate_policy(policy: str, world_dir: Path, baseline: str | None = None, n_per_family: int = 60,
                    seed: int = 0, temperature: float = 0.7, world=None,
                    cache: dict[str, PolicyAnswers] | None = None, headroom_rm: str | None = None,
                    headroom_n: int = 4, judge: PairwiseJudge | None = None,
                    judge_max_failure_share: float = 0.5) -> EvalResult:
    """Answer held-out test prompts with ``policy`` (and ``baseline``) and judge them with the gold labeler.

    With ``judge`` (an AI judge, ``eval.judges``), also its win rate against ``baseline`` on the same answers:
    ``judge_win_rate`` and its counts in ``judge`` (:func:`judge_pairs` raises past
    ``judge_max_failure_share`` of unparsable replies).

    With ``headroom_rm``, also sample ``headroom_n`` more answers per prompt and compare the best of them,
    picked by that RM and by the gold judge, with the policy's own answer (:func:`eval.curves.headroom`)."""
    from tiller.world import load_world

    if judge is not None and not baseline:
        raise ConfigError("an AI judge compares two policies' answers: give a baseline (--baseline)")
    world = world or load_world(Path(world_dir))
    prompts, families = test_prompts(world, n_per_family, seed)
    cache = cache if cache is not None else {}

    def get(p: str) -> PolicyAnswers:
        if p not in cache:
            cache[p] = answer(p, prompts, families, temperature, seed)
        return cache[p]

    ans = get(str(policy))
    per, overall, rows = judge_answers(world.judge, ans)
    res = EvalResult(str(policy), per, overall, samples=rows)
    judged = judge_all(world.judge, ans)
    meta = policy_metadata(judged)
    res.metadata, res.aspect_means = meta["metadata"], meta["aspect_means"]
    corpus_valid = Path(world_dir) / "corpus-valid.jsonl"
    if corpus_valid.is_file():
        res.overall["pretrain_loss"] = corpus_loss(str(policy), corpus_valid)
    if baseline:
        res.baseline = str(baseline)
        base = get(str(baseline))
        res.win_rate = win_rates(world.judge, ans, base)
        base_judged = judge_all(world.judge, base)
        meta = policy_metadata(base_judged)
        res.baseline_metadata, res.baseline_aspect_means = meta["metadata"], meta["aspect_means"]
        res.aspect_win_rate = aspect_win_rates(judged, base_judged)
        if judge is not None:
            report = judge_pairs(judge, prompts, ans.texts, base.texts, max_failure_share=judge_max_failure_share)
            constrained = [bool(a["has_constraint"]) for a in judged]
            res.judge = judge_report_json(judge, report, judge_max_failure_share)
            res.judge_win_rate = judge_win_rates(families, constrained, report.outcomes)
    if headroom_rm:
        from tiller.eval.curves import policy_headroom

        res.headroom = policy_headroom(policy, headroom_rm, prompts, ans.texts, world.judge, n=headroom_n,
                                       temperature=temperature, seed=seed + 1)
    return res


def _ci(d: dict[str, float] | None, key: str = "value", pct: bool = True) -> str:
    """``x% [lo, hi] n=N`` of an estimate or win rate dict, or "–" where there is none."""
    if not d:
        return "–"
    f = "{:.1%}" if pct else "{:.2f}"
    return f"{f.format(d[key])} [{f.format(d['lo'])}, {f.format(d['hi'])}] n={d['n']}"


def metadata_lines(res: EvalResult) -> list[str]:
    """The policy's InstructGPT metadata (and the baseline's beside it): rates with Wilson intervals, then means."""
    names = [res.policy] + ([res.baseline] if res.baseline else [])
    cols = [(res.metadata, res.aspect_means), (res.baseline_metadata, res.baseline_aspect_means)][:len(names)]
    lines = ["InstructGPT's metadata (fig. 4): share of the answers it applies to, 95% Wilson interval",
             f"{'':<20}" + "".join(f"{n[-34:]:<36}" for n in names)]
    for key in METADATA:
        lines.append(f"{key:<20}" + "".join(f"{_ci(rates.get(key)):<36}" for rates, _ in cols))
    lines.append("means of the aspects (0 to 1), the gold score and the 1-7 Likert, 95% normal interval")
    for key in MEAN_BOUNDS:
        pct = key not in ("score", "likert")
        lines.append(f"{key:<20}" + "".join(f"{_ci(means.get(key), pct=pct):<36}" for _, means in cols))
    return [line.rstrip() for line in lines]


def aspect_win_lines(res: EvalResult) -> list[str]:
    """Against the baseline: the gold wins / ties / losses, then the win rate restricted to each aspect."""
    ov = res.win_rate.get("overall")
    if not ov:
        return []
    lines = [f"gold vs baseline: wins {ov['wins']:.1%}, ties {ov['ties']:.1%}, losses {ov['losses']:.1%}",
             "win rate restricted to each aspect (higher wins, ties count half; constraint: prompts with one)"]
    for aspect, w in res.aspect_win_rate.items():
        lines.append(f"{aspect:<20}{_ci(w, 'rate'):<36}ties {w['ties']:.1%}")
    return lines


def judge_lines(res: EvalResult) -> list[str]:
    """Which judge gave the win rates; for an AI judge, its counts, unparsable replies and win rates."""
    if not res.win_rate:
        return []
    if not res.judge:
        return ["win rates above: the world's gold judge"]
    j = res.judge
    lines = [f"win rates above: the world's gold judge; AI judge {j['judge']} (template {j['template']}):",
             f"  {j['n_asked']} questions (both orders of {j['n_pairs']} pairs), {j['n_parse_failures']} replies "
             f"not A, B or tie, {j['n_pairs_left_out']} pairs left out of its win rates"]
    lines += [f"  unparsable: {e!r}" for e in j["failure_examples"]]
    lines.append("AI judge win rate vs baseline (a win needs both orders to agree; ties count half)")
    for bucket, w in res.judge_win_rate.items():
        rate = _ci(w, "rate") if w["n"] else "–"
        ties = f"ties {w['ties']:.1%}" if w["n"] else ""
        lines.append(f"{bucket:<20}{rate:<36}{ties:<12}left out {w['left_out']}")
    return lines


def print_eval(res: EvalResult) -> None:
    print(f"policy {res.policy}")
    print(f"{'family':<12}{'score':>8}{'correct':>9}{'refusal':>9}{'halluc.':>9}" + ("  win rate vs baseline" if res.win_rate else ""))
    for fam in sorted(res.per_family) + ["overall"]:
        d = res.per_family.get(fam, res.overall)
        line = (f"{fam:<12}{d['score']:>8.3f}{d['correct']:>9.2f}"
                f"{d.get('refusal_rate', float('nan')):>9.2f}{d.get('hallucination_rate', float('nan')):>9.2f}")
        if res.win_rate and fam in res.win_rate:
            w = res.win_rate[fam]
            line += f"  {w['rate']:.1%} [{w['lo']:.1%}, {w['hi']:.1%}] n={w['n']}"
        print(line)
    for bucket in CONSTRAINT_BUCKETS:
        if bucket in res.win_rate:
            print(f"{'prompts ' + bucket:<47}  {_ci(res.win_rate[bucket], 'rate')}")
    for line in metadata_lines(res) + aspect_win_lines(res):
        print(line)
    for line in judge_lines(res):
        print(line)
    if res.headroom:
        print("headroom: the best of n more answers against the policy's own answer (gold win rate)")
        print(f"{'n':>4}  {'picked by the RM':<26}{'picked by the gold judge'}")
        for r in res.headroom:
            rm, gold = (f"{r[w]['rate']:.1%} [{r[w]['lo']:.1%}, {r[w]['hi']:.1%}]" for w in ("rm", "gold"))
            print(f"{r['n']:>4}  {rm:<26}{gold}")
    if "pretrain_loss" in res.overall:
        print(f"held-out pretraining loss {res.overall['pretrain_loss']:.3f} "
              f"(perplexity {math.exp(res.overall['pretrain_loss']):.2f})")
