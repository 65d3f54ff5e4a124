"""The end of ``tiller run``: every policy of the run answers the held-out prompts, then each judge of
``eval.judges`` speaks (issue #14).

- ``world``: the embedded world's gold judge, as before: win rates answer the questions the report asks (did
  RLHF beat SFT and the base model? did ptx pay the alignment tax back? did each round beat the one before?),
  Elo ranks every checkpoint from all pairwise judgements, InstructGPT's metadata per policy and the win rates
  restricted to each aspect say what a win is made of.
- ``openai:URL[:MODEL]``: an AI judge on the same comparisons, over the first ``eval.n_prompts`` prompts, both
  orders of every pair; its unparsable replies are counted, never dropped in silence.
- ``app``: people in ``tiller app`` rank a blinded batch of ``eval.compare``'s answers (``eval/human.py``).

A project run (no world) has no gold judge: what is measured without one is the last round's RM score of
each policy's answers, the RM metrics of ``tiller rm`` and RL's own curves.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiller.config import ConfigError
from tiller.eval.evaluate import PolicyAnswers, answer, corpus_loss, judge_win_rates, mean_ci, test_prompts
from tiller.eval.results import (
    CurvePoint,
    Estimate,
    JudgeResults,
    PolicyEval,
    RMRound,
    RunResults,
    Sample,
    Scores,
    WinRate,
)
from tiller.judges import N_EXAMPLES

if TYPE_CHECKING:
    from tiller.eval.human import HumanEval
    from tiller.judges import JudgeReport, PairwiseJudge

COMPARISONS = [  # (name in the report, policy A, policy B)
    ("final vs sft", "final", "sft"),
    ("final vs base", "final", "base"),
    ("ppo-ptx vs sft", "ppo-ptx-r1", "sft"),
    ("ppo vs sft", "ppo-noptx-r1", "sft"),
    ("bon vs sft", "bon-r1", "sft"),
    ("ppo-ptx vs ppo", "ppo-ptx-r1", "ppo-noptx-r1"),
    ("ppo-ptx vs bon", "ppo-ptx-r1", "bon-r1"),
    ("dpo vs sft", "dpo-r1", "sft"),
    ("ppo-ptx vs dpo", "ppo-ptx-r1", "dpo-r1"),
    ("round 2 vs round 1", "ppo-ptx-r2", "ppo-ptx-r1"),
    ("round 3 vs round 2", "ppo-ptx-r3", "ppo-ptx-r2"),
]
N_SAMPLES = 60  # answers kept per policy in results.json
UNBOUNDED = (-math.inf, math.inf)  # an RM score's range: its mean's interval is not clipped


def evaluate_run(cfg, rd: Path, world, policies: dict[str, str], rms: dict[str, tuple[Path, list[Path]]],
                 rm_metrics: dict[str, dict], prompts: list[Any] | None = None) -> RunResults:
    """Judge the run: ``policies`` maps names to policy folders, ``rms`` round names (``r1``, ...) to the
    round's RM folder and the rankings it learned from, ``rm_metrics`` rounds to ``tiller rm``'s metrics.
    ``world`` is None for a project run, whose held-out chat ``prompts`` are then given. The pipeline adds the
    timings and training curves to what this returns."""
    from tiller.judges import make_judge

    es = cfg.eval
    specs = list(es.judges)
    gold = "world" in specs
    if gold and world is None:
        raise ConfigError("eval.judges: world is the embedded world's gold judge; a project run has none "
                          "(judge with app or openai:URL[:MODEL])")
    # each AI judge's server is asked for its models now: one that is down fails before answers are sampled
    ai = {s: make_judge(s, template=es.judge_template or None, timeout=es.judge_timeout)
          for s in specs if s.startswith("openai:")}
    if world is not None:
        prompts, families = test_prompts(world, es.n_per_family, es.seed)
        constrained = [bool(world.judge.aspects(p, "")["has_constraint"]) for p in prompts]
    elif not prompts:
        raise ConfigError("a run without the embedded world is evaluated on its held-out test prompts: none given")
    else:
        prompts, families = list(prompts), ["all"] * len(prompts)
        constrained = [False] * len(prompts)

    # 1. every distinct policy answers ("final" is the same folder as the last round: answered once)
    answers: dict[str, PolicyAnswers] = {}
    by_path: dict[str, PolicyAnswers] = {}
    for name, path in policies.items():
        if path not in by_path:
            by_path[path] = answer(path, prompts, families, es.temperature, es.seed)
        answers[name] = by_path[path]
    # 2. what needs no judge: the last round's RM score, held-out pretraining loss, RM metrics
    last = max(rms, key=lambda r: int(r[1:])) if rms else None
    rm_scores = _rm_scores(str(rms[last][0]), by_path) if last else {}
    corpus = rd / "world/corpus-valid.jsonl"  # the alignment tax needs held-out pretraining text: the world's
    losses = {path: corpus_loss(path, corpus) if corpus.is_file() else None for path in by_path}
    evals = {name: _plain_eval(ans, rm_scores.get(ans.name), losses[policies[name]]) for name, ans in answers.items()}
    out = RunResults(run=rd.name, policies=dict(policies), evals=evals, judged_by=specs,
                     rm={r: RMRound.from_dict(rm_metrics.get(r, {})) for r in rms},
                     rm_scored_by=Path(rms[last][0]).name if last else None)
    compared = comparisons(policies, answers, es.compare[0] if es.compare else None, es.baseline)
    # 3. the judges
    if gold:
        _judge_gold(out, cfg, world, policies, answers, rms, compared, prompts, families)
    else:  # RL's curves as training recorded them: RM score and KL, no gold score
        out.curves = {name: [CurvePoint.from_dict(p) for p in json.loads((Path(path) / "curve.json").read_text())]
                      for name, path in policies.items() if name != "final" and (Path(path) / "curve.json").is_file()}
    subset = judged_subset(families, es.n_prompts)
    for spec, judge in ai.items():
        assert judge is not None  # make_judge gives None only for "world"
        out.judges[spec] = ai_judge(judge, compared, answers, prompts, families, constrained, subset,
                                    buckets=world is not None, policies=policies)
    if "app" in specs:  # last: people's time is spent only once every automatic judge has worked
        out.human = _judge_people(cfg, rd, answers, prompts, subset)
    return out


def comparisons(policies: dict[str, str], answers: dict[str, PolicyAnswers], first: str | None,
                baseline: str | None) -> list[tuple[str, str, str]]:
    """The comparisons of ``COMPARISONS`` whose two policies exist as different folders, and ``first`` (the
    first of ``eval.compare``) against ``baseline`` unless one of them already compares the same folders."""
    out = [(t, a, b) for t, a, b in COMPARISONS if a in answers and b in answers and policies[a] != policies[b]]
    if first in answers and baseline in answers and policies[first] != policies[baseline]:
        pair = {policies[first], policies[baseline]}
        if not any({policies[a], policies[b]} == pair for _, a, b in out):
            out.append((f"{first} vs {baseline}", first, baseline))
    return out


def judged_subset(families: list[str], n: int) -> list[int]:
    """Indices of the ``n`` prompts the AI and app judges see: taken in turn from each family (the held-out
    prompts come grouped by family, and the first ``n`` would leave families out), in their original order."""
    queues: dict[str, list[int]] = {}
    for i, fam in enumerate(families):
        queues.setdefault(fam, []).append(i)
    picked: list[int] = []
    while len(picked) < n and any(queues.values()):
        for q in queues.values():
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return sorted(picked)


def alias_free(name: str, policies: dict[str, str]) -> str:
    """``final`` as the policy it is an alias of (the last round's name), any other name as it is."""
    if name != "final":
        return name
    same = [n for n, p in policies.items() if n != "final" and p == policies.get("final")]
    return same[-1] if same else name


def _rm_scores(rm_dir: str, by_path: dict[str, PolicyAnswers]) -> dict[str, list[float]]:
    """The RM's normalised score of every answer, per policy folder: one RM load for all policies."""
    from tiller.scoring import RewardScorer

    scorer = RewardScorer(rm_dir)
    return {path: scorer.score(a.prompts, a.texts) for path, a in by_path.items()}


def _plain_eval(ans: PolicyAnswers, rm: list[float] | None, pretrain_loss: float | None) -> PolicyEval:
    """A policy's evaluation without a gold judge: its answers, their RM score (mean, 95% interval) and the
    held-out pretraining loss where there is one."""
    rows = [Sample(fam, p, t, rm_score=None if rm is None else rm[i])
            for i, (p, fam, t) in enumerate(zip(ans.prompts, ans.families, ans.texts, strict=True))]
    est = None
    if rm:
        m, lo, hi = mean_ci(rm, UNBOUNDED)
        est = Estimate(m, lo, hi, len(rm))
    return PolicyEval(ans.name, overall=Scores(pretrain_loss=pretrain_loss), samples=rows[:N_SAMPLES], rm_score=est)


def _judge_gold(out: RunResults, cfg, world, policies: dict[str, str], answers: dict[str, PolicyAnswers],
                rms: dict[str, tuple[Path, list[Path]]], compared: list[tuple[str, str, str]], prompts: list[Any],
                families: list[str]) -> None:
    """The embedded world's gold judge on everything: scores, metadata, win rates, Elo, RM gold accuracy,
    RL and best-of-n curves, headroom; written into ``out``."""
    from tiller.eval.curves import bon_curve, gold_matches, judge_scores, policy_headroom, rl_curve
    from tiller.eval.elo import elo_intervals, elo_ratings
    from tiller.eval.evaluate import aspect_win_rates, judge_all, judge_answers, policy_metadata, win_rates
    from tiller.eval.results import Headroom, HeadroomRow
    from tiller.eval.rm_accuracy import rm_gold_accuracy

    es, judge = cfg.eval, world.judge
    for r, (rm_dir, rankings) in rms.items():
        out.rm[r].gold_accuracy = rm_gold_accuracy(judge, rm_dir, rankings, cfg.rm)
    judged = {name: judge_all(judge, ans) for name, ans in answers.items()}
    for name, ans in answers.items():
        ev = out.evals[name]
        per, overall, rows = judge_answers(judge, ans)
        meta = {k: {item: Estimate.from_dict(e) for item, e in v.items()} for k, v in policy_metadata(judged[name]).items()}
        ev.per_family = {f: Scores.from_dict(s) for f, s in per.items()}
        ev.overall = Scores.from_dict({**overall, "pretrain_loss": ev.overall.pretrain_loss})
        # the same answers in the same order: each keeps the RM score it had
        ev.samples = [replace(Sample.from_dict(r), rm_score=s.rm_score)
                      for r, s in zip(rows[:N_SAMPLES], ev.samples, strict=True)]
        ev.metadata, ev.aspect_means = meta["metadata"], meta["aspect_means"]
    out.win_rates = {title: {f: WinRate.from_dict(w) for f, w in win_rates(judge, answers[a], answers[b]).items()}
                     for title, a, b in compared}
    out.aspect_win_rates = {title: {x: WinRate.from_dict(w) for x, w in aspect_win_rates(judged[a], judged[b]).items()}
                            for title, a, b in compared}
    distinct = {n: a for n, a in answers.items() if n != "final"}
    matches = gold_matches(judge, {n: a.texts for n, a in distinct.items()}, prompts)
    anchor = "sft" if "sft" in distinct else None
    out.elo, out.elo_intervals = elo_ratings(matches, anchor=anchor), elo_intervals(matches, anchor=anchor)
    for name, path in policies.items():  # RL's (RM score and KL from training, gold judged here), best-of-n
        if name != "final" and (Path(path) / "curve.json").is_file():
            out.curves[name] = [CurvePoint.from_dict(p) for p in rl_curve(path, judge)]
    if es.bon_curve and "r1" in rms:
        valid = [p["prompt"] for p in world.prompts if p["split"] == "valid"][:64]
        out.curves["bon"] = [CurvePoint.from_dict(p) for p in bon_curve(policies["sft"], str(rms["r1"][0]), valid,
                                                                         judge_scores(judge), seed=es.seed)]
    if es.headroom_n > 1 and rms and "sft" in answers:
        last_dir = rms[max(rms, key=lambda r: int(r[1:]))][0]
        rows = policy_headroom(policies["sft"], last_dir, prompts, answers["sft"].texts, judge, n=es.headroom_n,
                               temperature=es.temperature, seed=es.seed + 1)
        out.headroom = Headroom("sft", Path(last_dir).name, [HeadroomRow.from_dict(r) for r in rows])


def ai_judge(judge: PairwiseJudge, compared: list[tuple[str, str, str]], answers: dict[str, PolicyAnswers],
             prompts: list[Any], families: list[str], constrained: list[bool], subset: list[int],
             buckets: bool, policies: dict[str, str], max_failure_share: float = 0.5) -> JudgeResults:
    """An AI judge on each comparison over the prompts at ``subset``. Each pair of policy folders is asked
    once (an AI judge costs time or money): a comparison of the same folders reuses its outcomes, turned
    round when the order is. ``buckets``: win rates per family and constraint bucket too (the embedded
    world's prompts), else overall only."""
    from tiller.judges import judge_pairs

    ps = [prompts[i] for i in subset]
    fams, cons = [families[i] for i in subset], [constrained[i] for i in subset]
    folders = {name: a.name for name, a in answers.items()}
    reports: dict[tuple[str, str], JudgeReport] = {}  # (folder A, folder B) -> what the judge said
    for _, a, b in compared:
        fa, fb = folders[a], folders[b]
        if (fa, fb) not in reports and (fb, fa) not in reports:
            reports[(fa, fb)] = judge_pairs(judge, ps, [answers[a].texts[i] for i in subset],
                                            [answers[b].texts[i] for i in subset], max_failure_share=max_failure_share)
    by_title = by_comparison(compared, folders, reports)
    template = getattr(judge, "template_path", None)
    return judge_results(judge.name, None if template is None else str(template), reports, by_title, compared,
                         fams, cons, buckets, policies, max_failure_share)


def by_comparison(compared: list[tuple[str, str, str]], folders: dict[str, str],
                  reports: dict[tuple[str, str], JudgeReport]) -> dict[str, list[float | None]]:
    """Each comparison's outcomes for its first policy, from the report on its two folders (turned round
    where the judge was asked them the other way round)."""
    out: dict[str, list[float | None]] = {}
    for title, a, b in compared:
        fa, fb = folders[a], folders[b]
        if (fa, fb) in reports:
            out[title] = list(reports[(fa, fb)].outcomes)
        else:
            out[title] = [None if o is None else 1.0 - o for o in reports[(fb, fa)].outcomes]
    return out


def judge_results(name: str, template: str | None, reports: dict[tuple[str, str], JudgeReport],
                  by_title: dict[str, list[float | None]], compared: list[tuple[str, str, str]], families: list[str],
                  constrained: list[bool], buckets: bool, policies: dict[str, str],
                  max_failure_share: float) -> JudgeResults:
    """What an AI judge said, as a record: counts over the distinct folder pairs it was asked about
    (``reports``), win rates per comparison from ``by_title``'s outcomes (pairs without one left out and
    counted), and Elo from the outcomes of each distinct folder pair once."""
    from tiller.eval.elo import elo_intervals, elo_ratings

    examples = [e for r in reports.values() for e in r.failure_examples][:N_EXAMPLES]
    res = JudgeResults(name, template, n_prompts=len(families),
                       n_asked=sum(r.n_asked for r in reports.values()),
                       n_parse_failures=sum(r.n_parse_failures for r in reports.values()),
                       n_pairs=sum(len(r.outcomes) for r in reports.values()),
                       n_pairs_left_out=sum(r.n_left_out for r in reports.values()), failure_examples=examples,
                       max_failure_share=max_failure_share)
    for title, outcomes in by_title.items():
        rates = judge_win_rates(families, constrained, outcomes)
        res.win_rates[title] = {b: WinRate.from_dict(w) for b, w in rates.items() if buckets or b == "overall"}
    # Elo: every distinct folder pair once, under the name the report shows (final as its round)
    seen: set[frozenset[str]] = set()
    matches = []
    for title, a, b in compared:
        pair = frozenset((policies[a], policies[b]))
        if pair in seen:
            continue
        seen.add(pair)
        na, nb = alias_free(a, policies), alias_free(b, policies)
        matches += [(na, nb, o) for o in by_title[title] if o is not None]
    players = {m[0] for m in matches} | {m[1] for m in matches}
    anchor = "sft" if "sft" in players else None
    res.elo, res.elo_intervals = elo_ratings(matches, anchor=anchor), elo_intervals(matches, anchor=anchor)
    return res


def _judge_people(cfg, rd: Path, answers: dict[str, PolicyAnswers], prompts: list[Any],
                  subset: list[int]) -> HumanEval:
    """People in ``tiller app`` rank the answers of ``eval.compare``'s policies (each folder once, under the
    first name that names it) on the prompts at ``subset``; win rates against ``eval.baseline``."""
    from tiller.eval.human import human_eval

    es = cfg.eval
    shown: dict[str, str] = {}  # folder -> the name people's results go under
    for name in [*es.compare, es.baseline]:
        if name in answers:
            shown.setdefault(answers[name].name, name)
    if es.baseline not in answers:
        raise ConfigError(f"eval.baseline: the run has no policy {es.baseline!r} (it has {', '.join(answers)})")
    if len(shown) < 2:
        raise ConfigError(f"eval.compare: people need two different policies to compare; {es.compare} and the "
                          f"baseline {es.baseline!r} name {len(shown)} in this run")
    texts = {name: [answers[name].texts[i] for i in subset] for name in shown.values()}
    return human_eval(cfg.label.db, f"{rd.name}-eval", [prompts[i] for i in subset], texts,
                      shown[answers[es.baseline].name], rd / "report", overlap=es.app_overlap, seed=es.seed,
                      poll_s=cfg.label.poll_s, timeout_s=cfg.label.timeout_s or None)
