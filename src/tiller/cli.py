"""``tiller``: one command, a subcommand per stage.

Every stage takes ``--run NAME`` (its files live in ``runs/NAME/``), ``--config FILE`` (YAML) and
``key=value`` overrides after the options; its inputs default to the files earlier stages wrote in the
same run folder. A bad config or data file prints one line and exits with status 2.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from tiller.chat import ChatFormatError
from tiller.config import ConfigError, help_lines, load_config
from tiller.data.cli import app as data_app
from tiller.data.formats import DataError
from tiller.distributed import launched_processes, rank
from tiller.judges import JudgeError
from tiller.runs import run_dir
from tiller.vllm_rollout import RolloutServerError

if not __import__("torch").cuda.is_available():  # DeepSpeed, when installed, would print a warning on stdout
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # in every process that asks it which device it is on
transformers_logging = __import__("transformers").utils.logging
transformers_logging.set_verbosity_error()  # load reports and shard progress are noise at this scale
transformers_logging.disable_progress_bar()

app = typer.Typer(
    help="tiller: train language models to follow instructions from human feedback (SFT, reward models, PPO-ptx).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app)

F = TypeVar("F", bound=Callable[..., Any])

# --run-name: under torchrun, whose own parser takes `--run` for an abbreviation of its `--run-path`
Run = Annotated[str, typer.Option("--run", "-r", "--run-name", help="run name (folder under runs/) or path")]
Config = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]
Force = Annotated[bool, typer.Option("--force", help="redo the stage even if its outputs are up to date")]
Overrides = Annotated[list[str] | None, typer.Argument(help="config overrides, key=value (dotted for nesting)")]


DATA_PARALLEL = {"pretrain", "sft", "rm", "ppo", "bon", "dpo"}  # the commands that run under torchrun / accelerate launch


def user_errors(fn: F) -> F:
    """Turn the errors a user can fix (bad config, bad data) into one line on stderr and exit status 2.

    Under a multi-process launch only the data-parallel stages run, and only the main process prints to
    stdout (every rank would print the same result); errors still reach stderr from any rank."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        name = fn.__name__.removesuffix("_cmd")
        try:
            if launched_processes() > 1 and name not in DATA_PARALLEL:
                raise ConfigError(f"`tiller {name}` runs in one process; launch it without torchrun / accelerate "
                                  f"launch (the data-parallel stages are {', '.join(sorted(DATA_PARALLEL))})")
            quiet = contextlib.redirect_stdout(open(os.devnull, "w")) if rank() > 0 else contextlib.nullcontext()
            with quiet:
                return fn(*args, **kwargs)
        except (ConfigError, DataError, ChatFormatError, FileNotFoundError, TimeoutError, RolloutServerError,
                JudgeError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def epilog(module: str, name: str) -> str:
    """The config keys of a stage, for its --help (imported lazily: only when help is shown)."""
    import importlib

    cls = getattr(importlib.import_module(module), name)
    return "Config keys (YAML file or key=value):\n\n" + "\n\n".join(f"  {line}" for line in help_lines(cls))


class StageCommand(typer.core.TyperCommand):
    """A command whose --help lists its config class's fields (``config_class = "module:Class"``), read
    lazily so that importing the CLI does not import every stage."""

    config_class = ""

    @property
    def epilog(self) -> str:  # type: ignore[override]
        module, _, name = self.config_class.partition(":")
        return epilog(module, name)

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        pass


def stage(name: str, config_class: str):
    cls = type(f"{name}Command", (StageCommand,), {"config_class": config_class})
    return app.command(name, cls=cls)


def require(path: Path, what: str) -> Path:
    if not Path(path).exists():
        raise ConfigError(f"{what} {path} does not exist (run the earlier stage first, or pass its path)")
    return Path(path)


def show(metrics: dict) -> None:
    for k, v in metrics.items():
        if isinstance(v, float):
            typer.echo(f"  {k:<28} {v:.4f}")
        elif isinstance(v, (int, str)):
            typer.echo(f"  {k:<28} {v}")


# ---------------------------------------------------------------------------------------------- stages


@stage("world", "tiller.world.config:WorldConfig")
@user_errors
def world_cmd(run: Run = "default", config: Config = None, force: Force = False, overrides: Overrides = None) -> None:
    """Build the embedded default world: prompts, demonstrations, pretraining corpus, simulated labelers."""
    from tiller.world.cli import world_cmd as build

    build(run_dir(run) / "world", config, overrides or [], force)


@stage("pretrain", "tiller.stages.pretrain:PretrainConfig")
@user_errors
def pretrain_cmd(run: Run = "default", config: Config = None, force: Force = False, overrides: Overrides = None,
                 corpus: Annotated[Path | None, typer.Option(help="corpus-train.jsonl (default: the run's world)")] = None,
                 valid: Annotated[Path | None, typer.Option(help="corpus-valid.jsonl")] = None) -> None:
    """Stage 0: train a tokenizer and pretrain a small base model on the corpus."""
    from tiller.stages.pretrain import PretrainConfig, pretrain

    cfg = load_config(PretrainConfig, config, overrides or [])
    rd = run_dir(run)
    corpus = require(corpus or rd / "world/corpus-train.jsonl", "corpus")
    valid = require(valid or rd / "world/corpus-valid.jsonl", "validation corpus")
    metrics = pretrain(cfg, corpus, valid, rd / "base", rd / "logs", force)
    typer.echo(f"base model in {rd / 'base'}")
    show(metrics)


@stage("sft", "tiller.stages.sft:SFTConfig")
@user_errors
def sft_cmd(run: Run = "default", config: Config = None, force: Force = False, overrides: Overrides = None,
            model: Annotated[str | None, typer.Option(help="base model folder or hub name (default: the run's base)")] = None,
            demos: Annotated[Path | None, typer.Option(help="demonstrations JSONL")] = None,
            rm: Annotated[str | None, typer.Option(help="keep the epoch this reward model scores best (InstructGPT)")] = None,
            out: Annotated[Path | None, typer.Option(help="output folder (default runs/NAME/sft)")] = None) -> None:
    """Stage 1: supervised fine-tuning on demonstrations (loss on response tokens only)."""
    from tiller.stages.sft import SFTConfig, sft

    cfg = load_config(SFTConfig, config, [*(overrides or []), *([f"select_by_rm={rm}"] if rm else [])])
    rd = run_dir(run)
    demos = require(demos or rd / "world/demos.jsonl", "demonstrations")
    metrics = sft(cfg, model or str(require(rd / "base", "base model")), demos, out or rd / "sft", rd / "logs", force)
    typer.echo(f"SFT model in {out or rd / 'sft'}")
    show(metrics)


@stage("sample", "tiller.stages.sample:SampleConfig")
@user_errors
def sample_cmd(run: Run = "default", config: Config = None, force: Force = False, overrides: Overrides = None,
               policy: Annotated[str | None, typer.Option(help="policy folder (default: the run's sft)")] = None,
               prompts: Annotated[Path | None, typer.Option(help="prompts JSONL")] = None,
               out: Annotated[Path | None, typer.Option(help="output JSONL")] = None) -> None:
    """Sample K answers per prompt from a policy, ready to be ranked."""
    from tiller.stages.sample import SampleConfig, sample

    cfg = load_config(SampleConfig, config, overrides or [])
    rd = run_dir(run)
    out = out or rd / "data/samples.jsonl"
    metrics = sample(cfg, policy or str(require(rd / "sft", "policy")),
                     require(prompts or rd / "world/prompts.jsonl", "prompts"), out, force)
    typer.echo(f"samples in {out}")
    show(metrics)


@stage("label", "tiller.labelers:LabelConfig")
@user_errors
def label_cmd(run: Run = "default", config: Config = None, overrides: Overrides = None,
              labeler: Annotated[str | None, typer.Option(help="world | app | rm | judge")] = None,
              samples: Annotated[Path | None, typer.Option(help="samples JSONL to rank")] = None,
              out: Annotated[Path | None, typer.Option(help="rankings JSONL to write")] = None) -> None:
    """Rank sampled answers: simulated labelers (world), people in the web app (app), or a reward model (rm)."""
    from tiller.labelers import LabelConfig, label

    rd = run_dir(run)
    extra = [f"labeler={labeler}"] if labeler else []
    cfg = load_config(LabelConfig, config, [*(overrides or []), *extra], base={"world": str(rd / "world")})
    out = out or rd / "data/rankings.jsonl"
    metrics = label(cfg, require(samples or rd / "data/samples.jsonl", "samples"), out)
    typer.echo(f"rankings in {out}")
    show(metrics)


@stage("rm", "tiller.stages.reward:RMConfig")
@user_errors
def rm_cmd(run: Run = "default", config: Config = None, force: Force = False, overrides: Overrides = None,
           model: Annotated[str | None, typer.Option(help="model to start from (default: the run's sft)")] = None,
           rankings: Annotated[list[Path] | None, typer.Option(help="rankings JSONL (repeatable)")] = None,
           demos: Annotated[Path | None, typer.Option(help="demonstrations: the bias makes them score mean 0")] = None,
           out: Annotated[Path | None, typer.Option(help="output folder (default runs/NAME/rm)")] = None) -> None:
    """Stage 2: a reward model from K-wise rankings (one forward per answer, all pairs of a prompt together)."""
    from tiller.stages.reward import RMConfig, train_rm

    cfg = load_config(RMConfig, config, overrides or [])
    rd = run_dir(run)
    files = [require(p, "rankings") for p in (rankings or [rd / "data/rankings.jsonl"])]
    demos = demos if demos is not None else (rd / "world/demos.jsonl" if (rd / "world/demos.jsonl").is_file() else None)
    out = out or rd / "rm"
    metrics = train_rm(cfg, model or str(require(rd / "sft", "model")), files, demos, out, rd / "logs", force)
    typer.echo(f"reward model in {out}")
    show(metrics)


@app.command("score")
@user_errors
def score_cmd(rm: Annotated[list[str], typer.Option(help="reward model folder (repeatable)")],
              input: Annotated[Path, typer.Option(help="JSONL with prompt and response (or responses)")],
              out: Annotated[Path, typer.Option(help="JSONL to write, each line with 'scores'")]) -> None:
    """Score (prompt, response) pairs with one or more reward models."""
    from tiller.scoring import RewardScorer

    rows = [json.loads(line) for line in require(input, "input").read_text().splitlines() if line.strip()]
    for i, r in enumerate(rows, 1):
        if "prompt" not in r or not (r.get("response") is not None or r.get("responses")):
            raise ConfigError(f"{input}:{i}: field 'prompt'/'response': each line needs a prompt and a response")
    scorers = {p: RewardScorer(p) for p in rm}
    for r in rows:
        resp = r.get("responses") or [r["response"]]
        r["scores"] = {p: s.score([r["prompt"]] * len(resp), resp) for p, s in scorers.items()}
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    typer.echo(f"scored {len(rows)} lines into {out}")


@stage("ppo", "tiller.stages.ppo:PPOConfig")
@user_errors
def ppo_cmd(run: Run = "default", config: Config = None, force: Force = False, overrides: Overrides = None,
            policy: Annotated[str | None, typer.Option(help="policy to start from (default: the run's sft)")] = None,
            ref: Annotated[str | None, typer.Option(help="reference policy for the KL penalty (default: sft)")] = None,
            rm: Annotated[str | None, typer.Option(help="reward model folder (or rewards=[...] in the config)")] = None,
            prompts: Annotated[Path | None, typer.Option(help="prompts JSONL")] = None,
            ptx_corpus: Annotated[Path | None, typer.Option(help="pretraining corpus for PPO-ptx")] = None,
            algo: Annotated[str | None, typer.Option(help="ppo | reinforce | rloo | grpo")] = None,
            out: Annotated[Path | None, typer.Option(help="output folder (default runs/NAME/policy)")] = None) -> None:
    """Stage 3: RL against the reward model(s): PPO-ptx, or reinforce / rloo / grpo."""
    from tiller.stages.ppo import PPOConfig, train_ppo

    cfg = load_config(PPOConfig, config, [*(overrides or []), *([f"algo={algo}"] if algo else [])])
    rd = run_dir(run)
    sft = str(require(rd / "sft", "SFT model")) if not (policy and ref) else ""
    out = out or rd / "policy"
    corpus = ptx_corpus or (rd / "world/corpus-train.jsonl" if (rd / "world/corpus-train.jsonl").is_file() else None)
    metrics = train_ppo(cfg, policy or sft, ref or sft, require(prompts or rd / "world/prompts.jsonl", "prompts"),
                        out, rd / "logs", rm_path=rm or (str(rd / "rm") if not cfg.rewards else None),
                        ptx_corpus=corpus, force=force)
    typer.echo(f"policy in {out}")
    show(metrics)


@stage("dpo", "tiller.stages.dpo:DPOConfig")
@user_errors
def dpo_cmd(run: Run = "default", config: Config = None, force: Force = False, overrides: Overrides = None,
            policy: Annotated[str | None, typer.Option(help="policy to start from (default: the run's sft)")] = None,
            ref: Annotated[str | None, typer.Option(help="frozen reference policy (default: sft)")] = None,
            rankings: Annotated[list[Path] | None, typer.Option(help="rankings JSONL (repeatable)")] = None,
            out: Annotated[Path | None, typer.Option(help="output folder (default runs/NAME/policy-dpo)")] = None) -> None:
    """Stage 3, offline: DPO from the rankings (no reward model, no sampling), against a frozen reference."""
    from tiller.stages.dpo import DPOConfig, dpo

    cfg = load_config(DPOConfig, config, overrides or [])
    rd = run_dir(run)
    sft = str(require(rd / "sft", "SFT model")) if not (policy and ref) else ""
    files = [require(p, "rankings") for p in (rankings or [rd / "data/rankings.jsonl"])]
    out = out or rd / "policy-dpo"
    metrics = dpo(cfg, policy or sft, ref or sft, files, out, rd / "logs", force)
    typer.echo(f"policy in {out}")
    show(metrics)


@stage("bon", "tiller.stages.best_of_n:BoNConfig")
@user_errors
def bon_cmd(run: Run = "default", config: Config = None, force: Force = False, overrides: Overrides = None,
            policy: Annotated[str | None, typer.Option(help="policy to start from (default: the run's sft)")] = None,
            rm: Annotated[str | None, typer.Option(help="reward model folder")] = None,
            prompts: Annotated[Path | None, typer.Option(help="prompts JSONL")] = None,
            out: Annotated[Path | None, typer.Option(help="output folder (default runs/NAME/bon)")] = None) -> None:
    """Stage 3 alternative: best-of-K rejection sampling, then fine-tuning on the RM's picks."""
    from tiller.stages.best_of_n import BoNConfig, best_of_n

    cfg = load_config(BoNConfig, config, overrides or [])
    rd = run_dir(run)
    out = out or rd / "bon"
    metrics = best_of_n(cfg, policy or str(require(rd / "sft", "policy")),
                        require(prompts or rd / "world/prompts.jsonl", "prompts"), out, rd / "logs",
                        rm_path=rm or (str(require(rd / "rm", "reward model")) if not cfg.rewards else None), force=force)
    typer.echo(f"policy in {out}")
    show(metrics)


@stage("run", "tiller.pipeline:RunConfig")
@user_errors
def run_cmd(run: Run = "default", config: Config = None, force: Force = False, overrides: Overrides = None) -> None:
    """The whole loop: world, pretrain, SFT, then rounds of sample/label/RM/PPO, evaluation and a report.

    Resumable: rerun the same command after a crash or kill and it continues from the last finished stage
    or checkpoint."""
    from tiller.pipeline import RunConfig, run_pipeline

    cfg = load_config(RunConfig, config, overrides or [])
    report = run_pipeline(cfg, run_dir(run), force)
    typer.echo(f"\nreport: {report}")
    results = json.loads((report.parent / "results.json").read_text())
    evals = {n: e for n, e in results.get("evals", {}).items() if n != "final"}
    if any("score" in e["overall"] for e in evals.values()):  # gold score per family (a project run has none)
        families = sorted({f for e in evals.values() for f in e["per_family"]})
        typer.echo("\ngold score" + "".join(f"{n:>14}" for n in evals))
        for fam in [*families, "overall"]:
            row = [e["per_family"].get(fam, e["overall"]).get("score", float("nan")) for e in evals.values()]
            typer.echo(f"{fam:<10}" + "".join(f"{x:>14.3f}" for x in row))
    summary = report.parent / "metrics.json"
    if summary.is_file():
        show({k: v for k, v in json.loads(summary.read_text()).items() if k.startswith(("win_rate/", "rm/"))
              and not k.endswith(("_lo", "_hi"))})


@app.command("report")
def report_cmd(run: Run = "default") -> None:
    """Re-render the HTML report of a finished run from its results.json."""
    from tiller.eval.report import report_cmd as render

    typer.echo(f"report: {render(run)}")


@app.command("eval")
@user_errors
def eval_cmd(policy: Annotated[str, typer.Option(help="policy folder")],
             run: Run = "default",
             baseline: Annotated[str | None, typer.Option(help="policy to compare against (win rates)")] = None,
             world: Annotated[Path | None, typer.Option(help="world folder (default: the run's)")] = None,
             n_per_family: Annotated[int, typer.Option(help="held-out test prompts per family")] = 60,
             seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
             headroom_rm: Annotated[str | None, typer.Option(
                 help="reward model: also compare the best of --headroom-n answers, picked by it and by the gold "
                      "judge, with the policy's own answer (how much a better RM could buy)")] = None,
             headroom_n: Annotated[int, typer.Option(help="answers per prompt for --headroom-rm")] = 4,
             judge: Annotated[str, typer.Option(
                 help="who else judges the win rates against --baseline: world (the gold judge alone) or "
                      "openai:URL[:MODEL], any OpenAI-compatible server (tiller serve included; URL is its base, "
                      "e.g. http://127.0.0.1:8000/v1), asked both orders of every pair; its win rates are "
                      "reported beside the gold ones. Key: OPENAI_API_KEY or TILLER_API_KEY. Or app: people "
                      "rank the answers blind in `tiller app` (the --also ... --out options)")] = "world",
             judge_template: Annotated[Path | None, typer.Option(
                 help="the AI judge's prompt: a Jinja file showing {{ prompt }}, {{ answer_a }} and {{ answer_b }} "
                      "(default: the packaged eval/templates/judge_pairwise.j2)")] = None,
             judge_timeout: Annotated[float, typer.Option(
                 help="seconds the AI judge may take per question (then retried twice)")] = 60.0,
             also: Annotated[list[str] | None, typer.Option(
                 help="--judge app: another policy to compare, PATH or NAME=PATH (repeatable). Each policy is "
                      "named by its folder (runs/x/policy-r3: policy-r3) unless given as NAME=PATH, which "
                      "--policy and --baseline accept too")] = None,
             prompts: Annotated[Path | None, typer.Option(
                 help="--judge app: held-out prompts, a PromptRecord JSONL (only its test split if it has "
                      "splits); default: the world's test prompts (--n-per-family per family)")] = None,
             n_prompts: Annotated[int | None, typer.Option(
                 help="--judge app: at most this many of the prompts (a seeded sample)")] = None,
             db: Annotated[str, typer.Option(
                 help="--judge app: the app's database, sqlite:///file.db or postgresql+psycopg://...")]
                 = "sqlite:///feedback.db",
             batch: Annotated[str | None, typer.Option(
                 help="--judge app: the ranking batch's name (default human-eval-RUN); the same name again "
                      "resumes waiting, nothing is imported twice")] = None,
             overlap: Annotated[int, typer.Option(help="--judge app: labelers per prompt")] = 1,
             timeout: Annotated[float | None, typer.Option(
                 help="--judge app: stop waiting for labelers after this many seconds (default: wait)")] = None,
             poll: Annotated[float, typer.Option(help="--judge app: seconds between looks at the batch")] = 5.0,
             out: Annotated[Path | None, typer.Option(
                 help="--judge app: folder of the key, labels, results and page (default runs/NAME/human-eval)")]
                 = None) -> None:
    """Judge a policy on held-out prompts with the world's gold labeler (and against a baseline), and
    optionally with an AI judge (--judge openai:URL); or with people (--judge app): every policy's answers
    ranked blind in `tiller app`, then win rates against the baseline, Likert, flags and Elo."""
    from tiller.eval.evaluate import evaluate_policy, print_eval
    from tiller.judges import make_judge

    if headroom_rm and headroom_n < 2:
        raise ConfigError("--headroom-n must be at least 2")
    if judge != "world" and not baseline:
        raise ConfigError("--judge compares the policy with a baseline: give --baseline")
    if judge == "app":
        from tiller.eval import human_cli as human

        if headroom_rm or judge_template:
            raise ConfigError("--headroom-rm and --judge-template are for the gold and AI judges, not --judge app")
        assert baseline  # checked above
        where = run_dir(run)
        chosen = human.held_out_prompts(prompts, world or where / "world", n_per_family, n_prompts, seed)
        page = human.run_human_eval(human.policy_specs(policy, baseline, also or []), human.named_policy(baseline)[0],
                                    chosen, db, batch or human.default_batch(where.name), out or where / "human-eval",
                                    overlap=overlap, seed=seed, poll_s=poll, timeout_s=timeout)
        typer.echo(f"report: {page}")
        return
    # before any answer is sampled: a wrong spec or template, or a server that is down, fails now
    ai_judge = make_judge(judge, template=judge_template, timeout=judge_timeout)
    result = evaluate_policy(policy, world or run_dir(run) / "world", baseline=baseline,
                             n_per_family=n_per_family, seed=seed, headroom_rm=headroom_rm, headroom_n=headroom_n,
                             judge=ai_judge)
    print_eval(result)


@app.command("plan")
@user_errors
def plan_cmd(model: Annotated[str, typer.Option(help="config.json, model folder, or a name in configs/models/")],
             stage: Annotated[str, typer.Option(help="sft | rm | ppo")] = "sft",
             devices: Annotated[int, typer.Option(help="data-parallel devices")] = 1,
             sharding: Annotated[str, typer.Option(help="none (DDP) | zero2 | zero3 (FSDP full shard)")] = "none",
             lora_r: Annotated[int, typer.Option(help="LoRA rank on the blocks' linear layers (0: full fine-tune)")] = 0,
             batch: Annotated[int, typer.Option(help="sequences per device per forward")] = 8,
             seq_len: Annotated[int, typer.Option(help="tokens per sequence (prompt + response)")] = 512,
             response_len: Annotated[int, typer.Option(help="ppo: response tokens (0: seq-len / 2)")] = 0,
             rollout_batch: Annotated[int, typer.Option(help="ppo: sequences sampled at once (0: batch)")] = 0,
             grad_accum: Annotated[int, typer.Option(help="micro-batches per optimiser step")] = 1,
             dtype: Annotated[str, typer.Option(help="ppo: the frozen reward model's weights, fp32 | bf16")] = "bf16",
             value_backbone: Annotated[str, typer.Option(help="ppo with LoRA: own | shared (the policy's)")] = "own",
             reward_models: Annotated[int, typer.Option(help="ppo: reward models held (an ensemble's members)")] = 1,
             mixed_precision: Annotated[str, typer.Option(help="no | bf16 (autocast; weights stay fp32)")] = "no",
             gradient_checkpointing: Annotated[bool, typer.Option(help="recompute activations in the backward")] = False,
             accelerator: Annotated[str, typer.Option(help="gpu | cpu")] = "gpu",
             device_memory: Annotated[float, typer.Option(help="GiB per device")] = 80.0,
             overhead: Annotated[float | None, typer.Option(help="runtime GiB (default 1 on gpu, 0 on cpu)")] = None,
             as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False) -> None:
    """Memory per device of a stage (weights, gradients, AdamW, activations, logits, KV cache), from the
    model's shapes alone (no weights loaded), and whether it fits."""
    from tiller.config import from_dict
    from tiller.plan import PlanConfig, plan

    settings = dict(model=model, stage=stage, devices=devices, sharding=sharding, lora_r=lora_r, batch=batch,
                    seq_len=seq_len, response_len=response_len, rollout_batch=rollout_batch, grad_accum=grad_accum,
                    dtype=dtype, value_backbone=value_backbone, reward_models=reward_models,
                    mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing,
                    accelerator=accelerator, device_memory=device_memory, overhead=overhead)
    result = plan(from_dict(PlanConfig, settings, "tiller plan"))
    typer.echo(result.to_json() if as_json else result.table())


@app.command("status")
@user_errors
def status_cmd(run: Run = "default",
               as_json: Annotated[bool, typer.Option("--json", help="print the status as JSON")] = False) -> None:
    """Where a run stands: its stage and round, the stages done, and while a round waits for people the
    rankings done and needed per labeler, their agreement so far, and what comes next."""
    from tiller.status import format_status, run_status

    rd = run_dir(run)
    if not rd.is_dir():
        raise ConfigError(f"no run folder {rd}")
    st = run_status(rd)
    typer.echo(json.dumps(st.to_dict(), indent=2) if as_json else format_status(st))


def _mount_optional() -> None:
    """Commands whose modules need optional extras; mounted when importable."""
    try:
        from tiller.feedback.cli import app as feedback_app

        app.add_typer(feedback_app, name="app", help="The labeling web app and chat playground (needs the app extra).")
    except ImportError:  # pragma: no cover - the [app] extra is not installed
        pass
    try:
        from tiller.serve.cli import serve_cmd

        app.command("serve", help="Serve a model with an OpenAI-compatible API (/v1/chat/completions).")(serve_cmd)
    except ImportError:  # pragma: no cover
        pass
    # always mounted: its commands import gymnasium/MuJoCo/SB3 when they run and name the extra if missing
    from tiller.control.cli import app as control_app

    app.add_typer(control_app, name="control", help="Deep RL from human preferences on control tasks (issue #16).")


_mount_optional()

if __name__ == "__main__":
    app()
