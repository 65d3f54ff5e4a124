"""``tiller run``: the whole loop over one run folder, in rounds, resumable.

    world -> pretrain -> sft -> [sample K -> label -> rm (all labels so far) -> [rule rm] -> ppo-ptx] x rounds
          -> eval -> report

A project run (``data.source: project``, :mod:`tiller.project`) replaces the first two with its own data
snapshot and ``base_model``; labels may come from people in ``tiller app`` (the run waits, resumably, and
``status.json`` says on which batch) and ``eval.judges`` names who judges the result.

The optional rule RM (``rule_rm_flags``) is Sparrow's harmlessness RM, trained from the labelers' harm
flags on the same rankings; RL subtracts its score when it is negative. It is off by default: in the one
default-world run with it on (threshold 0, at the demonstrations' mean score), round 1's policy refused
every harmless request; that run also had a weaker ptx term, so the two effects are not separated.
Round 1 also trains the comparison arms: plain PPO without ptx and best-of-K from the same reward model, and
DPO from round 1's rankings without one (``arms``).
Every stage skips when its outputs are up to date and PPO resumes from its last checkpoint, so after a
crash or ``kill -9`` the same command continues where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from tiller.config import ConfigError, field, to_dict
from tiller.labelers import LabelConfig, label
from tiller.project import DataConfig, Sources
from tiller.runs import atomic_write_text, clean_stale, fingerprint, is_done, write_manifest
from tiller.scoring import RewardSource
from tiller.stages.best_of_n import BoNConfig, best_of_n
from tiller.stages.dpo import DPOConfig, dpo
from tiller.stages.ppo import PPOConfig, train_ppo
from tiller.stages.pretrain import PretrainConfig, pretrain
from tiller.stages.reward import RMConfig, train_rm
from tiller.stages.sample import SampleConfig, sample
from tiller.stages.sft import SFTConfig, sft
from tiller.tracking import latest_rows, read_metrics
from tiller.world import WorldConfig


@dataclass
class EvalSettings:
    n_per_family: int = field(60, help="held-out test prompts per family")
    temperature: float = field(0.7, help="sampling temperature of evaluated answers")
    bon_curve: bool = field(True, help="measure the best-of-n RM/gold vs KL curve")
    headroom_n: int = field(
        4, help="best-of-n headroom: this many SFT answers per test prompt, the best picked by the last RM and by "
                "the gold judge, each against one SFT answer; shows how much a better RM could buy (0: off)")
    seed: int = field(1234, help="sampling seed of evaluation")
    judges: list[str] = field(
        default_factory=lambda: ["world"],
        help="who judges the policies: world (the embedded world's gold judge), app (people in `tiller app` rank a "
             "blinded comparison batch of eval.compare's answers; the run waits, like label.labeler: app), "
             "openai:URL[:MODEL] (an OpenAI-compatible server asked both orders of every pair); the report names them")
    judge_template: str = field("", help="the AI judge's Jinja prompt ('' : the packaged eval/templates/judge_pairwise.j2)")
    judge_timeout: float = field(60.0, help="seconds the AI judge may take per question")
    compare: list[str] = field(default_factory=lambda: ["final", "sft", "base"],
                               help="judges app: the policies whose answers people rank side by side")
    baseline: str = field("sft", help="judges app: win rates are against this policy")
    n_prompts: int = field(100, help="held-out prompts the app and AI judges see (people's time is dear)")
    app_overlap: int = field(1, help="judges app: labelers per comparison")

    def validate(self) -> None:
        from tiller.judges import parse_judge_spec

        for j in self.judges:
            if j not in ("world", "app"):
                parse_judge_spec(j)  # a ConfigError-like JudgeError for anything else
        if "app" in self.judges and len(self.compare) < 2:
            raise ConfigError("eval.compare: people compare at least two policies")
        if self.n_prompts < 1 or self.app_overlap < 1:
            raise ConfigError("eval.n_prompts and eval.app_overlap must be at least 1")


@dataclass
class RunConfig:
    """The defaults are the tuned run of ``configs/default.yaml`` (why each value: the comments there), so
    ``tiller run`` with no ``--config`` is that run; tests/test_run_defaults.py keeps the two equal. Stage
    configs keep their own, general defaults for ``tiller pretrain``, ``tiller ppo`` and the others."""

    rounds: int = field(3, help="rounds of sample -> label -> rm -> rl (InstructGPT iterates steps 2-3)")
    seed: int = field(
        0, help="seed of the run: 1000 * seed is added to every stage's own seed (pretraining, SFT, sampling, "
                "labelers, RMs, RL, best-of-n), so runs with different seeds are independent draws of the same "
                "loop; the world (world.seed) and the evaluation prompts and sampling (eval.seed) stay, so their "
                "win rates are measured on the same test set")
    base_model: str = field("", help="start from this HF model (folder or hub name) instead of pretraining one")
    arms: list[str] = field(default_factory=lambda: ["ppo-noptx", "bon", "dpo"],
                            help="comparison arms trained in round 1: ppo-noptx, bon, dpo (DPO from SFT on round 1's "
                                 "rankings, no RM)")
    later_round_iterations: int = field(0, help="RL iterations in rounds after the first (0: as round 1)")
    later_rounds_from: Literal["sft", "previous"] = field(
        "sft", help="where RL of rounds after the first starts: the SFT model (each round's policy is trained "
                    "afresh against a better RM, as InstructGPT's PPO models were) or the previous round's policy")
    later_rounds_sft_k: int = field(
        2, help="in rounds after the first, this many of the K answers per prompt come from the SFT model and the "
                "rest from the newest policy, so the new comparisons also contrast the policy's habits with what it "
                "left behind (e.g. its refusals with SFT's compliance on harmful requests)")
    rule_rm_flags: list[str] = field(
        default_factory=list,
        help="Sparrow's rule RM: each round also trains a harmlessness RM from these labeler flags (flagged "
             "answers rank below the others, e.g. [harmful_advice, violent]) and RL subtracts its score when "
             "below 0; [] (the default) leaves it out")
    data: DataConfig = field(default_factory=DataConfig, help="where prompts and demonstrations come from")
    world: WorldConfig = field(default_factory=WorldConfig, help="the embedded world (data.source: world)")
    pretrain: PretrainConfig = field(
        default_factory=lambda: PretrainConfig(arch="llama", batch_size=8, lr=0.002, max_tokens=2_000_000,
                                               max_minutes=4.5), help="stage 0")
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(epochs=6, lr=0.001), help="stage 1")
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(k=4, n_prompts=700),
                                 help="K answers per prompt for ranking")
    label: LabelConfig = field(default_factory=lambda: LabelConfig(labeler="world", overlap=4),
                               help="who ranks (world labelers by default)")
    rm: RMConfig = field(default_factory=lambda: RMConfig(epochs=1, lr=0.001, normalize_std=True, ensemble=3),
                         help="stage 2")
    ppo: PPOConfig = field(
        default_factory=lambda: PPOConfig(iterations=12, rollout_batch=64, minibatch_size=32, ppo_epochs=2, lr=0.0002,
                                          kl_coef=0.05, ptx_coef=1.0, ptx_batch_size=8, ptx_block=64, eval_every=5),
        help="stage 3 (PPO-ptx)")
    bon: BoNConfig = field(default_factory=lambda: BoNConfig(k=4, n_prompts=400), help="best-of-K arm")
    dpo: DPOConfig = field(default_factory=lambda: DPOConfig(lr=2e-4), help="DPO arm (arms: [..., dpo])")
    eval: EvalSettings = field(default_factory=EvalSettings, help="evaluation")


KEY_METRICS = ("eval/perplexity", "loss/eval", "sets", "rankings", "eval/accuracy", "data/labeler_agreement",
               "objective/score", "objective/kl", "eval/rm_score", "mean_score_best", "seconds")


class Timer:
    """Runs a stage, prints its name, time and key metrics, and remembers how long it took."""

    def __init__(self, on_start: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.on_start = on_start

    def __call__(self, name: str, fn, *args, **kwargs):
        t = time.time()
        print(f"== {name}", flush=True)
        if self.on_start:
            self.on_start(name)
        out = fn(*args, **kwargs)
        self.seconds[name] = time.time() - t
        shown = ""
        if isinstance(out, dict):
            shown = ", ".join(f"{k} {out[k]:.4g}" for k in KEY_METRICS if isinstance(out.get(k), (int, float)))
        print(f"   {self.seconds[name]:.0f}s  {shown}".rstrip(), flush=True)
        return out


def seeded(cfg: RunConfig) -> RunConfig:
    """The stage configs with the run's seed offset added (``seed: 0`` changes nothing, so the stages of
    runs made before the field existed keep their fingerprints)."""
    if not cfg.seed:
        return cfg
    off = 1000 * cfg.seed
    return replace(cfg, seed=0, pretrain=replace(cfg.pretrain, seed=cfg.pretrain.seed + off),
                   sft=replace(cfg.sft, seed=cfg.sft.seed + off), sample=replace(cfg.sample, seed=cfg.sample.seed + off),
                   label=replace(cfg.label, seed=cfg.label.seed + off), rm=replace(cfg.rm, seed=cfg.rm.seed + off),
                   ppo=replace(cfg.ppo, seed=cfg.ppo.seed + off), bon=replace(cfg.bon, seed=cfg.bon.seed + off),
                   dpo=replace(cfg.dpo, seed=cfg.dpo.seed + off))


def world_sources(cfg: RunConfig, rd: Path, timer: Timer, force: bool) -> Sources:
    """The embedded world's files (built when missing or when ``world`` changed) and, unless ``base_model`` is
    set, a base model pretrained on its corpus."""
    from tiller.world import build_world

    wd = rd / "world"
    manifest = wd / "manifest.json"
    if force or not manifest.is_file() or json.loads(manifest.read_text()).get("config") != to_dict(cfg.world):
        timer("world", build_world, cfg.world, wd)
    if not cfg.base_model:
        timer("pretrain", pretrain, cfg.pretrain, wd / "corpus-train.jsonl", wd / "corpus-valid.jsonl",
              rd / "base", rd / "logs", force)
    return Sources(prompts=wd / "prompts.jsonl", demos=wd / "demos.jsonl", ptx_corpus=wd / "corpus-train.jsonl",
                   world_dir=wd)


def _waiting(rd: Path, fn: Callable[..., Any], people: bool, r: int | None, batch: str, db: str) -> Callable[..., Any]:
    """``fn``, which waits for people in ``tiller app`` when ``people``: the status then says which batch it
    waits on (after the Timer's "running"), so `tiller status` and the admin page can show its progress."""
    if not people:
        return fn

    def run(*args: Any, **kwargs: Any) -> Any:
        from tiller.status import write_status

        name = "eval" if r is None else f"label-r{r}"
        write_status(rd, name, state="waiting", round=r, batch=batch, db=db)
        return fn(*args, **kwargs)

    return run


def run_pipeline(cfg: RunConfig, rd: Path, force: bool = False) -> Path:
    """Run (or resume) the whole loop in ``rd``; returns the report's path. ``rd/status.json`` says where it
    stands (``tiller status``)."""
    from tiller import project
    from tiller.status import mark_failed

    project.validate(cfg)  # a bad project fails here, before any work
    rd.mkdir(parents=True, exist_ok=True)
    try:
        return _run(cfg, rd, force)
    except BaseException as e:  # the status says the run stopped and why; kill -9 leaves a dead pid instead
        mark_failed(rd, f"{type(e).__name__}: {e}"[:500])
        raise


def _run(cfg: RunConfig, rd: Path, force: bool) -> Path:
    from tiller import project
    from tiller.status import round_of, write_status

    start = time.time()
    clean_stale(rd)
    atomic_write_text(rd / "run-config.json", json.dumps(to_dict(cfg), indent=2))
    cfg = seeded(cfg)
    timer = Timer(on_start=lambda name: write_status(rd, name, round=round_of(name)))
    logs, data = rd / "logs", rd / "data"
    if cfg.data.source == "world":
        src = world_sources(cfg, rd, timer, force)
    else:
        def waiting_demos(batch: str) -> None:
            print(f"waiting for demonstration batch {batch!r} at `tiller app` ...", flush=True)
            write_status(rd, "data", state="waiting", batch=batch, db=cfg.label.db)

        src = timer("data", project.prepare, cfg, rd, waiting_demos, force)
    from tiller.world import load_world

    world = load_world(src.world_dir) if src.world_dir else None  # for evaluation only: the stages see files
    prompts = src.prompts
    base = cfg.base_model or str(rd / "base")
    sft_dir = str(rd / "sft")
    timer("sft", sft, cfg.sft, base, src.demos, rd / "sft", logs, force)
    policies = {"base": base, "sft": sft_dir}
    rm_metrics: dict[str, dict] = {}
    rms: dict[str, tuple[Path, list[Path]]] = {}  # round -> (RM folder, the rankings it learned from), for eval
    rankings: list[Path] = []
    policy = sft_dir
    for r in range(1, cfg.rounds + 1):
        samples = data / f"samples-r{r}.jsonl"
        s_cfg = replace(cfg.sample, seed=cfg.sample.seed + r)
        if r > 1 and cfg.later_rounds_sft_k:
            s_cfg = replace(s_cfg, mix_with=sft_dir, mix_k=cfg.later_rounds_sft_k)
        timer(f"sample-r{r}", sample, s_cfg, policy, prompts, samples, force)
        ranked = data / f"rankings-r{r}.jsonl"
        l_cfg = replace(cfg.label, seed=cfg.label.seed + r)
        l_inputs: dict[str, str | Path] = {"samples": samples}
        if src.world_dir:
            l_cfg = replace(l_cfg, world=cfg.label.world or str(src.world_dir))
            l_inputs["world"] = src.world_dir / "manifest.json"
        if cfg.label.labeler == "app":  # a batch per round; one database may serve several runs
            l_cfg = replace(l_cfg, batch=f"{cfg.label.batch or rd.name + '-samples'}-r{r}")
        l_fp = fingerprint("label", l_cfg, l_inputs)
        if force or not ranked.is_file() or not is_done(ranked.with_suffix(".manifest"), l_fp):
            m = timer(f"label-r{r}", _waiting(rd, label, cfg.label.labeler == "app", r, l_cfg.batch, l_cfg.db),
                      l_cfg, samples, ranked)
            write_manifest(ranked.with_suffix(".manifest"), stage="label", fingerprint=l_fp, config=l_cfg, metrics=m)
        rankings.append(ranked)
        rm_dir = rd / f"rm-r{r}"
        rm_cfg = replace(cfg.rm, allow_empty=True)  # rankings of model samples: an empty answer is data
        m = timer(f"rm-r{r}", train_rm, rm_cfg, sft_dir, list(rankings), src.demos, rm_dir, logs, force)
        rm_metrics[f"r{r}"], rms[f"r{r}"] = m, (rm_dir, list(rankings))
        ppo_cfg = cfg.ppo
        if cfg.rule_rm_flags and not cfg.ppo.rewards:
            rule_dir = rd / f"rm-harmless-r{r}"
            rule_cfg = replace(rm_cfg, label_source="flags:" + ",".join(cfg.rule_rm_flags), normalize_std=False)
            timer(f"rm-harmless-r{r}", train_rm, rule_cfg, sft_dir, list(rankings), src.demos, rule_dir,
                  logs, force)
            ppo_cfg = replace(ppo_cfg, rewards=[RewardSource(kind="rm", path=str(rm_dir), name="helpful"),
                                                RewardSource(kind="rm", path=str(rule_dir), name="harmless",
                                                             role="penalty", weight=1.0, threshold=0.0)])
        if r > 1 and cfg.later_round_iterations:
            ppo_cfg = replace(ppo_cfg, iterations=cfg.later_round_iterations)
        out = rd / f"policy-r{r}"
        start_from = policy if (r == 1 or cfg.later_rounds_from == "previous") else sft_dir
        timer(f"ppo-r{r}", train_ppo, ppo_cfg, start_from, sft_dir, prompts, out, logs, rm_path=str(rm_dir),
              ptx_corpus=src.ptx_corpus, force=force)
        policies[f"ppo-ptx-r{r}"] = str(out)
        if r == 1 and "ppo-noptx" in cfg.arms:
            noptx = replace(ppo_cfg, ptx_coef=0.0)
            timer("ppo-noptx-r1", train_ppo, noptx, sft_dir, sft_dir, prompts, rd / "policy-noptx-r1", logs,
                  rm_path=str(rm_dir), force=force)
            policies["ppo-noptx-r1"] = str(rd / "policy-noptx-r1")
        if r == 1 and "bon" in cfg.arms:
            timer("bon-r1", best_of_n, cfg.bon, sft_dir, prompts, rd / "bon-r1", logs, rm_path=str(rm_dir), force=force)
            policies["bon-r1"] = str(rd / "bon-r1")
        if r == 1 and "dpo" in cfg.arms:  # offline: round 1's rankings straight into the policy, no RM
            dpo_cfg = replace(cfg.dpo, allow_empty=True)  # rankings of model samples: an empty answer is data
            timer("dpo-r1", dpo, dpo_cfg, sft_dir, sft_dir, [ranked], rd / "policy-dpo-r1", logs, force)
            policies["dpo-r1"] = str(rd / "policy-dpo-r1")
        policy = str(out)
    policies["final"] = policy
    from tiller.eval.pipeline_eval import evaluate_run

    results = timer("eval", _waiting(rd, evaluate_run, "app" in cfg.eval.judges, None, f"{rd.name}-eval", cfg.label.db),
                    cfg, rd, world, policies, rms, rm_metrics, prompts=src.test_prompts)
    results.stage_seconds = dict(timer.seconds)
    results.seconds_total = time.time() - start
    ppo_logs = [f"ppo-policy-r{r}" for r in range(1, cfg.rounds + 1)] + ["ppo-policy-noptx-r1"]
    results.training = {s: rows for s in ppo_logs if (rows := latest_rows(read_metrics(logs, s)))}
    from tiller.eval.report import write_report

    report_dir = rd / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(report_dir / "results.json", json.dumps(results.to_dict(), indent=2, default=str))
    report = write_report(results, report_dir)
    write_status(rd, "report", state="done", report=str(report))
    return report
