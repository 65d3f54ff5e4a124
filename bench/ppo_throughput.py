"""Online RL throughput: ``tiller ppo`` (algo ppo and rloo) vs TRL's RLOOTrainer, in episodes per second.

    python bench/ppo_throughput.py                                 # 4 iterations of 8 prompts x 2, 32 tokens
    python bench/ppo_throughput.py --iterations 2 --repeats 1      # quicker
    python bench/ppo_throughput.py --model runs/default/sft        # a real policy instead of a fresh one

trl 1.16 has no ``PPOTrainer`` (removed from ``trl`` and not in ``trl.experimental``); its online trainers
with a learned reward model are ``RLOOTrainer`` and ``GRPOTrainer``. RLOO is the like-for-like comparison
with tiller's ``algo=rloo``: no value model, k samples per prompt, leave-one-out baseline, clipped update,
a reference model for the KL term. ``algo=ppo`` (GAE, a value model initialised from the RM) is timed too,
as the stage's default.

Every side: the same fresh ~1M-parameter GPT-2 as policy and reference, the same reward model (a
ScalarModel folder trained for one short epoch by ``train_rm``; TRL loads the folder as a sequence
classifier), the same prompts of the embedded world, ``--prompts`` prompts x ``--group`` samples per
iteration, ``--new-tokens`` new tokens at temperature 1, minibatches of ``--minibatch``, ``--epochs``
passes, KL coefficient 0.02, fp32 on CPU, one torch thread by default. An untimed one-iteration warm-up
of each runs first; repeats alternate the sides. Episodes/s counts only the iterations: for tiller the
sum of its ``time/{generation,scoring,training}_total``, for TRL ``train()`` from its first generation.
CPU seconds (less sensitive to other load) run from the first rollout to the end of the last update on
both sides.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    Timer,
    add_markdown_option,
    command_block,
    duration,
    table,
    tiny_base_model,
    tiny_world,
    world_rankings,
    write_markdown,
)
from datasets import Dataset  # noqa: E402
from rm_throughput import LoopClock, cpu_seconds  # noqa: E402

from tiller.chat import render_prompt  # noqa: E402
from tiller.data import write_jsonl  # noqa: E402
from tiller.stages.reward import RMConfig, train_rm  # noqa: E402

KL_COEF = 0.02


def make_rm(model_dir: Path, world, work: Path, max_len: int = 256) -> Path:
    """A ScalarModel folder: one short epoch of the real RM stage on simulated K=4 rankings."""
    write_jsonl(work / "rm-rankings.jsonl", world_rankings(world, 16, 4, seed=1))
    cfg = RMConfig(batch_size=8, max_len=max_len, valid_fraction=0.0, report_to=["none"])
    train_rm(cfg, str(model_dir), [work / "rm-rankings.jsonl"], None, work / "rm", work / "logs")
    return work / "rm"


def tiller_variant(spec: str) -> tuple[str, dict]:
    """``algo`` or ``algo:variant`` (variant ``compile``: compiled decode step; ``hf``: Hugging Face generate,
    old logprobs from a second forward, as before the loop sampler) -> (algo, PPOConfig overrides)."""
    algo, _, variant = spec.partition(":")
    overrides = {"": {}, "compile": {"compile_sampler": True}, "hf": {"sampler": "hf"}}[variant]
    return algo, overrides


def run_tiller(
    spec: str,
    a: argparse.Namespace,
    model_dir: Path,
    rm_dir: Path,
    prompts_file: Path,
    work: Path,
    iterations: int,
    tag: str,
) -> dict:
    """``iterations`` of the real stage; the clock is the stage's own per-phase totals (evaluation excluded)."""
    from tiller.stages import ppo as ppo_stage
    from tiller.stages.ppo import PPOConfig, train_ppo

    algo, overrides = tiller_variant(spec)
    cfg = PPOConfig(
        algo=algo,
        iterations=iterations,
        rollout_batch=a.prompts,
        group_size=a.group,
        minibatch_size=a.minibatch,
        ppo_epochs=a.epochs,
        max_new_tokens=a.new_tokens,
        kl_coef=KL_COEF,
        temperature=1.0,
        eval_every=0,
        eval_prompts=1,
        checkpoint_every=0,
        report_to=["none"],
        seed=0,
        **overrides,
    )
    # CPU clock: from the first rollout (``generate`` called with ``n``; the evaluation before the loop calls
    # it without) to the progress bar's close right after the loop
    clock, real_generate, start_cpu = LoopClock(ppo_stage.progress), ppo_stage.generate, []

    def generate(*args, **kwargs):
        if "n" in kwargs and not start_cpu:
            start_cpu.append(cpu_seconds())
        return real_generate(*args, **kwargs)

    ppo_stage.progress, ppo_stage.generate = clock, generate
    try:
        m = train_ppo(
            cfg,
            str(model_dir),
            str(model_dir),
            prompts_file,
            work / f"ppo-{tag}",
            work / "logs",
            rm_path=str(rm_dir),
            force=True,
        )
        cpu = clock.end_cpu - start_cpu[0]
    finally:
        ppo_stage.progress, ppo_stage.generate = clock.real, real_generate
    parts = {k: m[f"time/{k}_total"] for k in ("generation", "scoring", "training")}
    return {
        "seconds": sum(parts.values()),
        "cpu_s": cpu,
        **parts,
        "episodes": m["episodes"],
        "response_length": m["policy/response_length"],
    }


class _Clock:
    """Wraps a bound method of ``obj`` so calls add to ``timer`` under ``name``."""

    @staticmethod
    def wrap(obj, method: str, timer: Timer, name: str) -> None:
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            with timer(name):
                return inner(*args, **kwargs)

        setattr(obj, method, timed)


def run_trl(
    a: argparse.Namespace, model_dir: Path, rm_dir: Path, prompts: list, work: Path, iterations: int, tag: str
) -> dict:
    """``iterations`` generation batches of TRL's RLOOTrainer with the same sizes as tiller's."""
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from tiller.models import load_policy

    n_seq = a.prompts * a.group
    steps_per_gen = n_seq // a.minibatch
    policy, tok = load_policy(model_dir)
    args = RLOOConfig(
        output_dir=str(work / f"trl-{tag}"),
        per_device_train_batch_size=a.minibatch,
        steps_per_generation=steps_per_gen,
        num_generations=a.group,
        num_iterations=a.epochs,
        max_steps=iterations * steps_per_gen * a.epochs,
        max_completion_length=a.new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=KL_COEF,
        learning_rate=1e-4,
        max_grad_norm=1.0,
        normalize_advantages=True,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,  # TRL defaults: True, True, -, -
        dataloader_num_workers=0,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    # as many prompts as the run consumes, rendered as tiller renders them (TRL's plain-text format)
    rows = [{"prompt": render_prompt(prompts[i % len(prompts)])} for i in range(iterations * a.prompts)]
    trainer = RLOOTrainer(
        model=policy,
        reward_funcs=str(rm_dir),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
    )
    timer, lengths = Timer(), []

    class Lengths(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    trainer.add_callback(Lengths())
    _Clock.wrap(trainer, "_generate", timer, "generation")
    _Clock.wrap(trainer, "_calculate_rewards", timer, "scoring")
    first: list[float] = []
    orig = trainer._generate_and_score_completions

    def mark(*args, **kwargs):
        if not first:
            first.extend([time.perf_counter(), cpu_seconds()])
        return orig(*args, **kwargs)

    trainer._generate_and_score_completions = mark
    trainer.train()
    end, cpu = time.perf_counter(), cpu_seconds() - first[1]
    seconds = end - first[0]  # from the first generation: Trainer set-up before it is not per-episode work
    gen, score = timer.total.get("generation", 0.0), timer.total.get("scoring", 0.0)
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "generation": gen,
        "scoring": score,
        "training": seconds - gen - score,
        "episodes": iterations * n_seq,
        "response_length": statistics.mean(lengths) if lengths else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8, help="prompts per iteration (rollout batch)")
    ap.add_argument("--group", type=int, default=2, help="samples per prompt (RLOO k)")
    ap.add_argument("--minibatch", type=int, default=8, help="sequences per optimiser step")
    ap.add_argument(
        "--epochs", type=int, default=1, help="passes over each rollout batch (TRL num_iterations)"
    )
    ap.add_argument("--new-tokens", type=int, default=32, help="max new tokens per answer")
    ap.add_argument("--iterations", type=int, default=4, help="timed rollout batches per run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--algos",
        nargs="+",
        default=["rloo", "ppo", "rloo:compile", "ppo:compile", "rloo:hf", "ppo:hf"],
        help="tiller sides: algo[:compile|:hf] (default sampler: the eager loop)",
    )
    ap.add_argument(
        "--model", type=Path, default=None, help="a causal LM folder (default: a fresh tiny GPT-2)"
    )
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    add_markdown_option(ap)
    a = ap.parse_args(argv)
    started = time.perf_counter()
    if a.threads:
        torch.set_num_threads(a.threads)
    if (a.prompts * a.group) % a.minibatch:
        ap.error("--prompts * --group must be a multiple of --minibatch")

    work = a.work or Path(tempfile.mkdtemp(prefix="tiller-bench-ppo-"))
    world = tiny_world(work)
    model_dir = a.model or tiny_base_model(work, work / "world")
    rm_dir = make_rm(model_dir, world, work)
    prompts_file = work / "world" / "prompts.jsonl"
    prompts = [p["prompt"] for p in world.prompts if p["split"] == "train"]
    print(
        f"policy {model_dir}, RM {rm_dir}, torch threads {torch.get_num_threads()}; per iteration "
        f"{a.prompts} prompts x {a.group} = {a.prompts * a.group} episodes, {a.new_tokens} new tokens, "
        f"minibatch {a.minibatch}, {a.epochs} epoch(s)",
        flush=True,
    )

    sides = [f"tiller {x}" for x in a.algos] + ["TRL rloo"]

    def run(side: str, iterations: int, tag: str) -> dict:
        if side == "TRL rloo":
            return run_trl(a, model_dir, rm_dir, prompts, work, iterations, tag)
        return run_tiller(side.split()[1], a, model_dir, rm_dir, prompts_file, work, iterations, tag)

    from tiller.rollout import CompiledStep

    warm = {}
    for side in sides:  # warm-up, untimed here but reported: it holds any one-time cost (torch.compile)
        start, start_cpu, compiled = time.perf_counter(), cpu_seconds(), CompiledStep.seconds
        run(side, 1, f"warm-{side.replace(' ', '-').replace(':', '-')}")
        warm[side] = (time.perf_counter() - start, cpu_seconds() - start_cpu, CompiledStep.seconds - compiled)
        print(
            f"warm-up {side}: {time.perf_counter() - start:.1f} s wall, {cpu_seconds() - start_cpu:.1f} CPU-s "
            f"(one iteration + set-up; of which compiling the decode step: "
            f"{CompiledStep.seconds - compiled:.1f} s)",
            flush=True,
        )
    results: dict[str, list[dict]] = {s: [] for s in sides}
    for rep in range(a.repeats):
        for side in sides:
            r = run(side, a.iterations, f"{side.replace(' ', '-').replace(':', '-')}-{rep}")
            results[side].append(r)
            print(
                f"rep {rep} {side}: {r['episodes'] / r['seconds']:.2f} episodes/s ({r['seconds']:.1f}s, "
                f"{r['cpu_s']:.1f} CPU-s; gen "
                f"{r['generation']:.1f}s, score {r['scoring']:.1f}s, train {r['training']:.1f}s; mean response "
                f"{r['response_length']:.1f} tokens)",
                flush=True,
            )

    rows, facts = [], {}
    trl_eps = max(r["episodes"] / r["seconds"] for r in results["TRL rloo"])
    trl_cpu = max(r["episodes"] / r["cpu_s"] for r in results["TRL rloo"])
    # a lucky repeat moves the best-of
    trl_med = statistics.median(r["episodes"] / r["cpu_s"] for r in results["TRL rloo"])
    for side in sides:
        rs = results[side]
        eps = max(r["episodes"] / r["seconds"] for r in rs)
        eps_cpu = max(r["episodes"] / r["cpu_s"] for r in rs)
        med_cpu = statistics.median(r["episodes"] / r["cpu_s"] for r in rs)
        secs = sum(r["seconds"] for r in rs)
        share = {k: 100 * sum(r[k] for r in rs) / secs for k in ("generation", "scoring", "training")}
        facts[side] = {
            "best": eps_cpu / trl_cpu,
            "median": med_cpu / trl_med,
            "iter_cpu": min(r["cpu_s"] for r in rs) / a.iterations,
            "length": statistics.mean(r["response_length"] for r in rs),
            "generation": share["generation"],
        }
        rows.append(
            [
                side,
                round(eps, 2),
                f"{eps / trl_eps:.2f}x",
                round(eps_cpu, 2),
                f"{eps_cpu / trl_cpu:.2f}x",
                round(med_cpu, 2),
                f"{med_cpu / trl_med:.2f}x",
                f"{share['generation']:.0f}%",
                f"{share['scoring']:.0f}%",
                f"{share['training']:.0f}%",
                round(facts[side]["length"], 1),
            ]
        )
    result = table(
        [
            "trainer",
            "episodes/s (wall, best)",
            "vs TRL",
            "episodes/CPU-s (best)",
            "vs TRL (CPU)",
            "episodes/CPU-s (median)",
            "vs TRL (median CPU)",
            "generation",
            "scoring",
            "training (incl. ref/old logprobs)",
            "mean response tokens",
        ],
        rows,
    )
    print(
        f"\nbest of {a.repeats} repeat(s) x {a.iterations} iterations x {a.prompts * a.group} episodes; "
        f"torch threads {torch.get_num_threads()}; shares are of wall time over all repeats\n"
    )
    print(result)
    elapsed = time.perf_counter() - started
    print(f"\ntook {duration(elapsed)}")
    command = command_block("bench/ppo_throughput.py", argv, a)
    write_markdown(a.markdown, section(a, command, result, facts, warm, elapsed))


def section(a, command: str, result: str, facts: dict, warm: dict, elapsed: float) -> str:
    """This benchmark's part of docs/benchmarks.md: the prose around this run's figures."""
    n_seq = a.prompts * a.group
    compiled = [f"{w[2]:.1f} s of the {w[0]:.1f} s warm-up of {s}" for s, w in warm.items() if w[2] > 0.5]
    plain = [w[0] for s, w in warm.items() if w[2] <= 0.5]  # a second compiled side reuses the first's
    compile_note = (
        f"compiling the decode step took {' and '.join(compiled)} (inductor's on-disk cache as this machine "
        f"left it; with a cold cache it took 31.6 s and 47 s in earlier sessions). Once per process and batch "
        f"shape (the cache length is rounded up to a multiple of 64 so prompt widths don't each compile "
        f"again); every other side's warm-up took {min(plain):.1f} to {max(plain):.1f} s"
        if compiled and plain
        else "no side compiled the decode step in this run"
    )

    def ratio(side: str) -> str:
        f = facts.get(side)
        return f"{f['best']:.2f}x (median {f['median']:.2f}x)" if f else "not run"

    rloo = facts.get("tiller rloo")
    per_iter = f"about {rloo['iter_cpu']:.2f} CPU-s" if rloo else "its CPU time"
    trl_len, own_len = facts["TRL rloo"]["length"], rloo["length"] if rloo else float("nan")
    return f"""
## Online RL: episodes per second (`bench/ppo_throughput.py`)

{command}

Took {duration(elapsed)}.

trl 1.16 has no `PPOTrainer` (not in `trl`, not in `trl.experimental`); its online trainers that take a
learned reward model are `RLOOTrainer` and `GRPOTrainer`. The like-for-like comparison is tiller's
`algo=rloo` against TRL's `RLOOTrainer`: no value model, {a.group} samples per prompt, a leave-one-out
baseline, a clipped update, a reference model for the KL term. tiller's `algo=ppo` (GAE and a value model
initialised from the RM, trained alongside) is timed too, as the stage's default.

What runs, identically on every side: the fresh GPT-2 as policy and as reference; the same reward model
(a ScalarModel folder from one short epoch of `train_rm` on 16 K=4 rankings; TRL loads the folder as a
sequence classifier through `reward_funcs=PATH`); per iteration {a.prompts} train prompts of the world x
{a.group} samples = {n_seq} episodes, up to {a.new_tokens} new tokens at temperature 1 (top-p 1, no top-k),
minibatches of {a.minibatch} sequences ({n_seq // a.minibatch} optimiser steps per iteration), {a.epochs}
epoch(s) over each rollout (TRL `num_iterations={a.epochs}`), KL coefficient {KL_COEF}, lr 1e-4, whitened
advantages, fp32, no gradient checkpointing, no logging/saving/evaluation overhead beyond TRL's per-step
metric dictionary. {a.iterations} timed iterations per run after a one-iteration warm-up of each side (the
same warm-up for TRL); the {a.repeats} repeats alternate the sides. tiller's clock is its own
`time/{{generation,scoring,training}}_total`; TRL's is `train()` from its first generation (generation =
`_generate`, scoring = `_calculate_rewards`, the rest = training, which on both sides includes the
old-policy and reference log-probabilities). CPU seconds cover the same spans.

tiller's sides: `rloo`/`ppo` are the stage's defaults (`sampler=loop`, `compile_sampler=false`);
`:compile` turns on `compile_sampler`; `:hf` is `sampler=hf`, the sampling path before the decode loop
(Hugging Face `generate`, then a second no-grad policy forward for the old log-probabilities). The `:hf`
sides share the leaner forwards below, so `x` vs `x:hf` isolates the sampler.

Result ({a.repeats} repeats x {a.iterations} iterations x {n_seq} episodes, {a.threads} thread; the shares
are of wall time summed over the repeats):

{result}

One-time cost, printed by the run and not in the table: {compile_note}.

**Noise.** Best-of and median columns differ when one repeat is lucky: in an earlier session one TRL
repeat at 23.9 episodes/CPU-s against about 18 in the others moved every ratio of that run by about 30%.
For a longer A/B of the sampler alone:
`python bench/ppo_throughput.py --repeats 6 --algos rloo rloo:hf ppo ppo:hf --work /tmp/benchppo`.

What the sides differ in (all in `tiller.rollout`, `tiller.rl` and the rollout part of `tiller.stages.ppo`):

- **A decode-loop sampler** (`generate(..., backend="loop")`, the PPO stage's default `sampler: loop`):
  prefill, then one `model(input_ids, attention_mask, position_ids, cache=...)` per token over a
  preallocated `StaticCache` (falls back to the model's dynamic cache where a model has no static one),
  position ids from the left-padded mask, temperature, top-p with the ops of HF's `TopPLogitsWarper`,
  greedy at temperature 0, per-sequence stop at `<|end|>`/EOS, early exit when all rows stopped, under
  `torch.inference_mode`. It draws the same tokens as `generate` for the same seed (tested on GPT-2 and
  Llama, greedy and sampled, with and without top-p). `sampler: hf` keeps `generate`.
- **Old log-probabilities from the sampling logits**: the loop records log softmax(logits / T) of each
  sampled token, so the policy's second no-grad forward over the rollout is skipped (it equals that
  forward within 1e-6 here; the test against `policy_forward` asserts 1e-5). Rows where the trained
  sequence is not the sampled stream (a sampled pad token that `cut_at_stop` drops) and policies with
  active dropout still take the forward.
- **`compile_sampler: true`** compiles the one-token step with `torch.compile` (inductor); a failure to
  compile warns and samples eagerly. Off by default: at this size it saves about 3 ms per token (5.4
  against 8.1 ms per step of 16 rows, measured alone once), so the 9 to 47 s of compiling pays back only
  after some thousands of decode steps, more than a default pipeline run's PPO stage.
- **Leaner forwards** for the reference, old-logprob, value and training passes: prompt columns that are
  padding in every row of a minibatch are dropped, and only the response positions go through the
  unembedding (`logits_to_keep`). Same log-probabilities (max difference 0); 5 to 10% less CPU per
  forward in an A/B of the old and new `policy_forward`, measured once.

What it means:

- **Target (2x TRL per CPU-second)**: tiller rloo is {ratio("tiller rloo")} TRL in this run,
  rloo:compile {ratio("tiller rloo:compile")}, ppo {ratio("tiller ppo")}. Before the decode loop and the leaner
  forwards, the same command gave tiller rloo 0.91x and ppo 0.69x; four sessions after them gave rloo 1.05 to
  1.18x and ppo 0.75 to 0.91x. 2x is out of reach by these means: a tiller RLOO iteration ({per_iter}
  here) is mostly the model's own work that both trainers do: {a.new_tokens} decode steps, the reference
  forward, the RM forward, and the forward+backward of the minibatches (`bench/ppo_variants.py` below
  splits it). Halving it would need the update phase and the reward model compiled too, or a faster
  activation (GPT-2's `gelu_new` is seven elementwise passes; `gelu_pytorch_tanh` is one) and a
  generation engine (vLLM), which TRL can use as well.
- PPO stays below TRL's RLOO because it does more: the value model's forward over the rollout and its
  forward+backward per minibatch, which RLOO does not have.
- The compiled sampler's gain is real per step but hard to see in the whole stage at {a.iterations}
  iterations: it ranged from +5% to +22% over the eager loop for RLOO across earlier runs and nothing
  visible for PPO, where generation is a smaller share. TRL could compile its `generate` the same way (a
  static cache and a `CompileConfig` that allows CPU); that was not measured.
- Mean answer length: tiller {own_len:.1f}, TRL {trl_len:.1f} tokens (the sampled streams differ); a
  difference of a few percent in generated tokens does not change the comparison.
"""


if __name__ == "__main__":
    main()
