"""Gold-judged evaluation on held-out prompts: scores per family, refusal and hallucination rates, win rates.

Only evaluation imports the world's judge; it stands in for the human evaluators of InstructGPT section 4
(win rates against a baseline on prompts from held-out users).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tiller.models import load_policy
from tiller.rollout import generate


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
    win_rate: dict[str, dict[str, float]] = field(default_factory=dict)  # family -> {rate, lo, hi, n}
    baseline: str | None = None
    samples: list[dict] = field(default_factory=list)
    headroom: list[dict] = field(default_factory=list)  # rows of eval.curves.headroom

    def to_json(self) -> dict:
        return {"policy": self.policy, "baseline": self.baseline, "per_family": self.per_family,
                "overall": self.overall, "win_rate": self.win_rate, "headroom": self.headroom,
                "samples": self.samples[:50]}


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


def mean_ci(xs: list[float]) -> tuple[float, float, float]:
    """Mean with a normal-approximation 95% interval (outcomes in {0, 0.5, 1} for win rates)."""
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / max(n - 1, 1))
    half = 1.96 * sd / math.sqrt(n)
    return m, max(0.0, m - half), min(1.0, m + half)


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
    """Gold win rate of ``a`` over ``b`` per family and overall (ties count half), with 95% intervals."""
    outcomes: dict[str, list[float]] = defaultdict(list)
    for p, fam, x, y in zip(a.prompts, a.families, a.texts, b.texts, strict=True):
        o = judge.compare(p, x, y)
        outcomes[fam].append(o)
        outcomes["overall"].append(o)
    out = {}
    for fam, xs in outcomes.items():
        m, lo, hi = mean_ci(xs)
        out[fam] = {"rate": m, "lo": lo, "hi": hi, "n": len(xs),
                    "ties": sum(1 for x in xs if x == 0.5) / len(xs)}
    return out


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
                    headroom_n: int = 4) -> EvalResult:
    """Answer held-out test prompts with ``policy`` (and ``baseline``) and judge them with the gold labeler.

    With ``headroom_rm``, also sample ``headroom_n`` more answers per prompt and compare the best of them,
    picked by that RM and by the gold judge, with the policy's own answer (:func:`eval.curves.headroom`)."""
    from tiller.world import load_world

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
    corpus_valid = Path(world_dir) / "corpus-valid.jsonl"
    if corpus_valid.is_file():
        res.overall["pretrain_loss"] = corpus_loss(str(policy), corpus_valid)
    if baseline:
        res.baseline = str(baseline)
        res.win_rate = win_rates(world.judge, ans, get(str(baseline)))
    if headroom_rm:
        from tiller.eval.curves import policy_headroom

        res.headroom = policy_headroom(policy, headroom_rm, prompts, ans.texts, world.judge, n=headroom_n,
                                       temperature=temperature, seed=seed + 1)
    return res


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
    if res.headroom:
        print("headroom: the best of n more answers against the policy's own answer (gold win rate)")
        print(f"{'n':>4}  {'picked by the RM':<26}{'picked by the gold judge'}")
        for r in res.headroom:
            rm, gold = (f"{r[w]['rate']:.1%} [{r[w]['lo']:.1%}, {r[w]['hi']:.1%}]" for w in ("rm", "gold"))
            print(f"{r['n']:>4}  {rm:<26}{gold}")
    if "pretrain_loss" in res.overall:
        print(f"held-out pretraining loss {res.overall['pretrain_loss']:.3f} "
              f"(perplexity {math.exp(res.overall['pretrain_loss']):.2f})")
