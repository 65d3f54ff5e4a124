"""Cost against the work, and bf16 against fp32, on the benchmark's tiny model (issue #13).

    python bench/curves.py --work /tmp/benchcurves          # about 3 minutes here
    python bench/curves.py --repeats 1 --iterations 1       # quicker

Every point runs tiller's real stage code with one torch thread and keeps the best of ``--repeats`` in CPU
seconds (user + system of the process), with wall-clock beside it:

- RM against K: ``tiller.stages.reward.train_rm``, one epoch over ``--rankings`` rankings of K answers
  (K = 2..9), clocked over its training loop (bench/rm_throughput.py's ``LoopClock``);
- PPO against response length and against rollout batch: ``tiller.stages.ppo.train_ppo`` (algo ppo, the
  stage's default), ``--iterations`` iterations per point, clocked by wrapping the stage's own functions:
  ``sample_share`` inside ``collect`` (generation), the rest of ``collect`` (scoring: the RM, the
  reference, value and old-logprob forwards, advantages) and ``train_epochs`` (training);
- bf16 against fp32: the RM stage and the PPO stage with ``mixed_precision=bf16`` (``torch.autocast`` on
  the training forwards, fp32 weights), and the decode loop (``tiller.rollout.generate``) with bf16
  weights and under autocast.

Each curve gets a straight-line fit (marginal cost per unit, fixed cost) and a log-log fit (the exponent:
1 is proportional; below 1, a fixed cost or batching amortises). Plots go to ``docs/img/bench_*.png``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib  # noqa: E402
import matplotlib.ticker  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    add_markdown_option,
    command_block,
    cpu_seconds,
    duration,
    table,
    tiny_base_model,
    tiny_world,
    train_prompts,
    world_rankings,
    write_markdown,
)
from ppo_throughput import KL_COEF, make_rm  # noqa: E402
from rm_throughput import run_tiller as rm_epoch  # noqa: E402

from tiller.data import write_jsonl  # noqa: E402
from tiller.models import load_policy  # noqa: E402
from tiller.rollout import generate  # noqa: E402
from tiller.stages import ppo as ppo_stage  # noqa: E402
from tiller.stages.ppo import PPOConfig, train_ppo  # noqa: E402
from tiller.training import autocast  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("generation", "scoring", "training")
MINIBATCH = 16  # sequences per optimiser step, fixed: the batch curve's optimiser steps grow with the batch


def fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least squares: ``y = fixed + slope * x`` and ``log y = c + exponent * log x``."""
    slope, fixed = np.polyfit(xs, ys, 1)
    exponent, log_c = np.polyfit(np.log(xs), np.log(ys), 1)
    return {
        "slope": float(slope),
        "fixed": float(fixed),
        "exponent": float(exponent),
        "c": float(np.exp(log_c)),
    }


def best(points: list[dict], key: str = "cpu") -> dict:
    return min(points, key=lambda p: p[key])


# --- the measurements ---------------------------------------------------------------------------------


def rm_point(base: Path, world, work: Path, k: int, a, precision: str = "no") -> dict:
    """One RM epoch over ``a.rankings`` K-wise rankings: seconds per ranking (CPU and wall)."""
    path = work / f"rankings-k{k}.jsonl"
    if not path.is_file():
        write_jsonl(path, world_rankings(world, a.rankings, k, seed=k))
    t = rm_epoch(base, path, work, a.records_per_step, 256, 3e-4, f"k{k}", mixed_precision=precision)
    return {"cpu": t["cpu_s"] / a.rankings, "wall": t["loop_s"] / a.rankings}


def ppo_point(
    base: Path, rm: Path, work: Path, batch: int, length: int, iterations: int, precision="no"
) -> dict:
    """``iterations`` of the real PPO stage: CPU and wall seconds per iteration, per phase and in all, and
    the mean answer and the longest answer of each rollout batch (tokens; the decode loop runs that many
    steps, and scoring and training pad to it)."""
    cfg = PPOConfig(
        algo="ppo",
        iterations=iterations,
        rollout_batch=batch,
        group_size=1,
        minibatch_size=min(MINIBATCH, batch),
        ppo_epochs=1,
        max_new_tokens=length,
        kl_coef=KL_COEF,
        eval_every=0,
        eval_prompts=1,
        checkpoint_every=0,
        report_to=["none"],
        seed=0,
        mixed_precision=precision,
    )
    cpu, wall, lengths, widths, inside = dict.fromkeys(PHASES, 0.0), dict.fromkeys(PHASES, 0.0), [], [], []
    real = {n: getattr(ppo_stage, n) for n in ("sample_share", "collect", "train_epochs")}

    def clocked(name: str, phase: str):
        def call(*args, **kwargs):
            if name == "sample_share" and not inside:  # the evaluation points sample too: not counted
                return real[name](*args, **kwargs)
            inside.append(name)
            c, w = cpu_seconds(), time.perf_counter()
            try:
                out = real[name](*args, **kwargs)
            finally:
                inside.pop()
            cpu[phase] += cpu_seconds() - c
            wall[phase] += time.perf_counter() - w
            if name == "collect":
                lengths.append(out[1]["policy/response_length"])
                widths.append(out[0].batch.response_ids.shape[1])
            return out

        return call

    for name, phase in (("sample_share", "generation"), ("collect", "scoring"), ("train_epochs", "training")):
        setattr(ppo_stage, name, clocked(name, phase))
    try:
        train_ppo(
            cfg,
            str(base),
            str(base),
            work / "world" / "prompts.jsonl",
            work / "ppo",
            work / "logs",
            rm_path=str(rm),
            force=True,
        )
    finally:
        for name, fn in real.items():
            setattr(ppo_stage, name, fn)
    for d in (cpu, wall):  # collect's clock holds the sampling inside it
        d["scoring"] -= d["generation"]
    per = {f"cpu_{p}": cpu[p] / iterations for p in PHASES}
    return {
        **per,
        "cpu": sum(cpu.values()) / iterations,
        "wall": sum(wall.values()) / iterations,
        "length": float(np.mean(lengths)),
        "longest": float(np.mean(widths)),
    }


def decode_point(model, tok, prompts: list[str], length: int, bf16_autocast: bool) -> dict:
    """The decode loop over ``prompts`` (one answer each, one batch): CPU and wall seconds, tokens made."""
    c, w = cpu_seconds(), time.perf_counter()
    with autocast("bf16" if bf16_autocast else "no", "cpu"):
        ro = generate(
            model,
            tok,
            prompts,
            max_new_tokens=length,
            batch_size=len(prompts),
            row_seeds=list(range(len(prompts))),
        )
    return {
        "cpu": cpu_seconds() - c,
        "wall": time.perf_counter() - w,
        "tokens": sum(map(len, ro.response_ids)),
    }


def gemm_ms(rows: int, dtype: torch.dtype, repeats: int = 20) -> float:
    """CPU-ms of one (rows, 128) @ (128, 512) product, the shape of the model's MLP up-projection."""
    x, w = torch.randn(rows, 128, dtype=dtype), torch.randn(128, 512, dtype=dtype)
    x @ w
    c = cpu_seconds()
    for _ in range(repeats):
        x @ w
    return 1000 * (cpu_seconds() - c) / repeats


def cpu_facts() -> dict[str, str]:
    """The CPU's model name, torch's kernel level, and which bf16/AMX/AVX-512 flags it has."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    field = {
        ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in info.splitlines() if ":" in ln
    }
    model = f"{field.get('model name', '?')} (cpu family {field.get('cpu family', '?')}, model {field.get('model', '?')})"
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {
        "model": model,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "has": ", ".join(f for f in wanted if f in flags) or "none",
        "lacks": ", ".join(f for f in wanted if f not in flags) or "none",
    }


# --- the plots --------------------------------------------------------------------------------------


def plot_curve(path: Path, xs, points: list[dict], f: dict, xlabel: str, title: str, log: bool, unit: float):
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ys = [p["cpu"] * unit for p in points]
    ax.plot(xs, ys, "o", color="C0", label="CPU (user+sys)")
    ax.plot(xs, [p["wall"] * unit for p in points], "x", color="C7", label="wall (the same run)")
    if "cpu_generation" in points[0]:
        for i, phase in enumerate(PHASES):
            ax.plot(
                xs, [p[f"cpu_{phase}"] * unit for p in points], ".--", color=f"C{i + 1}", lw=1, label=phase
            )
    grid = np.geomspace(min(xs), max(xs), 50)
    if log:  # the power law is a straight line on these axes
        ys_fit = [f["c"] * g ** f["exponent"] * unit for g in grid]
        label = f"fit: {f['c'] * unit:.3g} x^{f['exponent']:.2f} (straight line: {f['slope'] * unit:.3g} per unit)"
    else:
        ys_fit = [(f["fixed"] + f["slope"] * g) * unit for g in grid]
        label = (
            f"fit: {f['fixed'] * unit:.3g} + {f['slope'] * unit:.3g} x (log-log exponent {f['exponent']:.2f})"
        )
    ax.plot(grid, ys_fit, "-", color="C0", lw=1, label=label)
    if log:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("s per iteration" if unit == 1 else "ms per ranking")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_precision(path: Path, ratios: list[tuple[str, float]]) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(ratios) + 1.2))
    names, values = [r[0] for r in ratios], [r[1] for r in ratios]
    names = [n + " (samples in fp32 either way)" if n.endswith("generation") else n for n in names]
    ax.barh(names, [v - 1 for v in values], left=1, color=["C3" if v > 1 else "C2" for v in values])
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.axvline(1.0, color="k", lw=1)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}x", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("CPU time, bf16 / fp32 (above 1: bf16 is slower)")
    ax.set_title("bf16 against fp32 on this CPU", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlim(min(0.5, min(values) / 1.5), max(values) * 2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the run --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ks", type=int, nargs="+", default=list(range(2, 10)), help="RM: answers per ranking")
    ap.add_argument("--rankings", type=int, default=32, help="RM: rankings per epoch")
    ap.add_argument("--records-per-step", type=int, default=8, help="RM: rankings per optimiser step")
    ap.add_argument(
        "--lengths", type=int, nargs="+", default=[16, 32, 64, 128, 256], help="PPO: max new tokens"
    )
    ap.add_argument(
        "--batches", type=int, nargs="+", default=[16, 32, 64, 128, 256], help="PPO: rollout batch"
    )
    ap.add_argument("--fixed-batch", type=int, default=16, help="PPO: rollout batch of the length curve")
    ap.add_argument("--fixed-length", type=int, default=32, help="PPO: new tokens of the batch curve")
    ap.add_argument("--iterations", type=int, default=1, help="PPO: iterations per point")
    ap.add_argument("--decode-tokens", type=int, default=64, help="precision: new tokens of the decode loop")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs of every point")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--img", type=Path, default=ROOT / "docs" / "img", help="where the PNG plots go")
    add_markdown_option(ap)
    a = ap.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(1)
    work = a.work or Path(tempfile.mkdtemp(prefix="tiller-bench-curves-"))
    world = tiny_world(work)
    base = tiny_base_model(work, work / "world", max_positions=512)  # prompt + 256 new tokens must fit
    rm = make_rm(base, world, work, max_len=512)
    print(f"model {base}, RM {rm}, torch threads {torch.get_num_threads()}", flush=True)

    rm_point(base, world, work, a.ks[0], a)  # warm-ups, untimed: lazy imports, allocator growth
    ppo_point(base, rm, work, a.fixed_batch, a.fixed_length, 1)
    rm_k = {k: [] for k in a.ks}
    by_length = {n: [] for n in a.lengths}
    by_batch = {n: [] for n in a.batches}
    for rep in range(a.repeats):  # repeats outermost: a burst of other load falls on one repeat of each
        for k in a.ks:
            rm_k[k].append(rm_point(base, world, work, k, a))
            print(f"rep {rep} RM K={k}: {1000 * rm_k[k][-1]['cpu']:.1f} CPU-ms per ranking", flush=True)
        for n in a.lengths:
            by_length[n].append(ppo_point(base, rm, work, a.fixed_batch, n, a.iterations))
            print(f"rep {rep} PPO length {n}: {by_length[n][-1]}", flush=True)
        for n in a.batches:
            by_batch[n].append(ppo_point(base, rm, work, n, a.fixed_length, a.iterations))
            print(f"rep {rep} PPO batch {n}: {by_batch[n][-1]}", flush=True)
    rm_best = [best(rm_k[k]) for k in a.ks]
    len_best = [best(by_length[n]) for n in a.lengths]
    batch_best = [best(by_batch[n]) for n in a.batches]

    precision = measure_precision(base, rm, world, work, a)
    elapsed_measure = time.perf_counter() - started

    a.img.mkdir(parents=True, exist_ok=True)
    fits = {
        "rm": fit(a.ks, [p["cpu"] for p in rm_best]),
        "length": fit([p["longest"] for p in len_best], [p["cpu"] for p in len_best]),
        "batch": fit(a.batches, [p["cpu"] for p in batch_best]),
    }
    fits["rm_wall"] = fit(a.ks, [p["wall"] for p in rm_best])
    plot_curve(
        a.img / "bench_rm_k.png",
        a.ks,
        rm_best,
        fits["rm"],
        "K (answers per ranking)",
        f"RM training (train_rm), CPU-ms per ranking; {a.rankings} rankings, {a.records_per_step} a step",
        log=False,
        unit=1000,
    )
    plot_curve(
        a.img / "bench_ppo_length.png",
        [p["longest"] for p in len_best],
        len_best,
        fits["length"],
        "longest answer of the batch, tokens (= decode steps; max_new_tokens 16..256)",
        f"one PPO iteration, CPU-s; rollout batch {a.fixed_batch}",
        log=True,
        unit=1,
    )
    plot_curve(
        a.img / "bench_ppo_batch.png",
        a.batches,
        batch_best,
        fits["batch"],
        "rollout batch (episodes)",
        f"one PPO iteration, CPU-s; {a.fixed_length} new tokens",
        log=True,
        unit=1,
    )
    plot_precision(a.img / "bench_bf16.png", precision["ratios"])
    elapsed = time.perf_counter() - started
    text = section(a, argv, rm_best, len_best, batch_best, fits, precision, elapsed)
    print(text)
    print(f"measurements {duration(elapsed_measure)}, in all {duration(elapsed)}")
    write_markdown(a.markdown, text)


def measure_precision(base: Path, rm: Path, world, work: Path, a) -> dict:
    """bf16 against fp32: the RM stage, the PPO stage, the decode loop, one matrix product."""
    out: dict = {"rm": {}, "ppo": {}, "decode": {}}
    k = 4
    for precision in ("no", "bf16"):
        runs = (
            a.repeats if precision == "no" else 1
        )  # bf16 is ~10x slower here: one run, its noise is small beside that
        out["rm"][precision] = best([rm_point(base, world, work, k, a, precision) for _ in range(runs)])
        out["ppo"][precision] = best(
            [
                ppo_point(base, rm, work, a.fixed_batch, a.fixed_length, a.iterations, precision)
                for _ in range(runs)
            ]
        )
        print(f"precision {precision}: RM {out['rm'][precision]}, PPO {out['ppo'][precision]}", flush=True)
    fp32, tok = load_policy(base, trainable=False)
    bf16, _ = load_policy(base, dtype=torch.bfloat16, trainable=False)
    prompts = train_prompts(world)[: a.fixed_batch]
    cases = {
        "fp32 weights": (fp32, False),
        "bf16 weights": (bf16, False),
        "fp32 weights, bf16 autocast": (fp32, True),
    }
    for name, (model, cast) in cases.items():
        decode_point(model, tok, prompts, 8, cast)  # warm-up
        n = a.repeats + 1 if name == "fp32 weights" else 1
        runs = [decode_point(model, tok, prompts, a.decode_tokens, cast) for _ in range(n)]
        out["decode"][name] = best(runs)
        print(f"decode {name}: {out['decode'][name]}", flush=True)
    out["gemm"] = {rows: (gemm_ms(rows, torch.float32), gemm_ms(rows, torch.bfloat16)) for rows in (16, 1024)}
    rm_, ppo, dec = out["rm"], out["ppo"], out["decode"]

    def per_token(d: dict) -> float:
        return d["cpu"] / d["tokens"]

    out["ratios"] = [
        (f"RM training epoch (K={k})", rm_["bf16"]["cpu"] / rm_["no"]["cpu"]),
        ("PPO iteration, all", ppo["bf16"]["cpu"] / ppo["no"]["cpu"]),
        *((f"PPO iteration, {p}", ppo["bf16"][f"cpu_{p}"] / ppo["no"][f"cpu_{p}"]) for p in PHASES),
        ("decode loop, bf16 weights", per_token(dec["bf16 weights"]) / per_token(dec["fp32 weights"])),
        (
            "decode loop, bf16 autocast",
            per_token(dec["fp32 weights, bf16 autocast"]) / per_token(dec["fp32 weights"]),
        ),
        *((f"matmul ({rows}x128)@(128x512)", b / f) for rows, (f, b) in out["gemm"].items()),
    ]
    return out


def section(a, argv, rm_best, len_best, batch_best, fits, precision, elapsed: float) -> str:
    """This benchmark's part of docs/benchmarks.md."""
    rm_rows = [
        [k, round(1000 * p["cpu"], 1), round(1000 * p["wall"], 1), round(1000 * p["cpu"] / k, 2)]
        for k, p in zip(a.ks, rm_best, strict=True)
    ]

    def ppo_rows(knobs, points):
        return [
            [
                n,
                round(p["length"], 1),
                round(p["longest"], 1),
                *(round(p[f"cpu_{ph}"], 3) for ph in PHASES),
                round(p["cpu"], 3),
                round(p["wall"], 3),
            ]
            for n, p in zip(knobs, points, strict=True)
        ]

    ppo_head = [
        "mean answer tokens",
        "longest answer",
        "generation CPU-s",
        "scoring CPU-s",
        "training CPU-s",
        "CPU-s",
        "wall s",
    ]
    f_rm, f_len, f_batch = fits["rm"], fits["length"], fits["batch"]
    len_x = [p["longest"] for p in len_best]

    def phase_exp(xs, points) -> str:
        return ", ".join(f"{ph} {fit(xs, [p[f'cpu_{ph}'] for p in points])['exponent']:.2f}" for ph in PHASES)

    gemm = [b / f for f, b in precision["gemm"].values()]
    gemm_lo, gemm_hi = min(gemm), max(gemm)
    cpu, p = cpu_facts(), precision
    rm_p, ppo_p, dec = p["rm"], p["ppo"], p["decode"]
    ratio = dict(p["ratios"])
    precision_rows = [
        [
            f"RM stage, one epoch of {a.rankings} K=4 rankings",
            round(rm_p["no"]["cpu"] * a.rankings, 2),
            round(rm_p["bf16"]["cpu"] * a.rankings, 2),
            f"{rm_p['bf16']['cpu'] / rm_p['no']['cpu']:.2f}x",
        ],
        *(
            [
                f"PPO stage, {ph} per iteration",
                round(ppo_p["no"][f"cpu_{ph}"], 3),
                round(ppo_p["bf16"][f"cpu_{ph}"], 3),
                f"{ratio[f'PPO iteration, {ph}']:.2f}x",
            ]
            for ph in PHASES
        ),
        [
            "PPO stage, one iteration",
            round(ppo_p["no"]["cpu"], 3),
            round(ppo_p["bf16"]["cpu"], 3),
            f"{ratio['PPO iteration, all']:.2f}x",
        ],
        [
            f"decode loop, {a.fixed_batch} x {a.decode_tokens} tokens, CPU-ms per generated token: bf16 weights",
            round(1000 * dec["fp32 weights"]["cpu"] / dec["fp32 weights"]["tokens"], 2),
            round(1000 * dec["bf16 weights"]["cpu"] / dec["bf16 weights"]["tokens"], 2),
            f"{ratio['decode loop, bf16 weights']:.2f}x",
        ],
        [
            "decode loop, CPU-ms per generated token: fp32 weights under bf16 autocast",
            round(1000 * dec["fp32 weights"]["cpu"] / dec["fp32 weights"]["tokens"], 2),
            round(
                1000
                * dec["fp32 weights, bf16 autocast"]["cpu"]
                / dec["fp32 weights, bf16 autocast"]["tokens"],
                2,
            ),
            f"{ratio['decode loop, bf16 autocast']:.2f}x",
        ],
        *(
            [f"one matrix product ({rows}x128)@(128x512), CPU-ms", round(f, 3), round(b, 3), f"{b / f:.1f}x"]
            for rows, (f, b) in p["gemm"].items()
        ),
    ]
    slower = ratio["PPO iteration, training"] > 1 and ratio[f"RM training epoch (K={4})"] > 1
    verdict = (
        "bf16 is slower than fp32 on this CPU wherever it is used, in training and in decoding"
        if slower and ratio["decode loop, bf16 weights"] > 1
        else "bf16 is not uniformly slower here; read the table row by row"
    )
    return f"""
## Cost against the work, and bf16 against fp32 (`bench/curves.py`)

{command_block("bench/curves.py", argv, a)}

Took {duration(elapsed)}. The slope of each stage's cost against the work it is given, and what bf16 does to
it, on the benchmark's tiny GPT-2 with a 512-token context (so that a prompt and 256 new tokens fit; the
other benchmarks' has 256), one torch thread, the best of {a.repeats} runs of every point in CPU seconds (user +
system of the process; wall-clock beside it). Each curve has a straight-line fit (the marginal cost of one
more unit, and the fixed cost at zero) and a log-log fit (the exponent: 1 means cost proportional to the
work; below 1, a fixed cost or batching amortises part of it).

### RM training time against K

`tiller.stages.reward.train_rm`, one epoch over {a.rankings} rankings of K answers ({a.records_per_step} rankings a step,
so {a.records_per_step}*K sequences a forward), fp32; the clock is the training loop.

{table(["K", "CPU-ms per ranking", "wall ms per ranking", "CPU-ms per answer"], rm_rows)}

Fit: **{1000 * f_rm["slope"]:.1f} CPU-ms per ranking for each more answer** (K), {1000 * f_rm["fixed"]:.1f} CPU-ms
at K=0; log-log exponent **{f_rm["exponent"]:.2f}**. Each answer is one sequence through the model whatever
K, and the C(K,2) comparisons cost nothing beside the forward, so the cost per ranking grows linearly in K
where a pairwise trainer's would grow as K(K-1) (see the RM benchmark above); the fixed part (the optimiser
step and per-step work shared by the step's rankings) puts the log-log exponent below 1. The points
scatter by a few ms because each K has its own rankings, with their own answer lengths.

![RM time per ranking against K](img/bench_rm_k.png)

### One PPO iteration against response length

`tiller.stages.ppo.train_ppo`, algo ppo (GAE, a value model initialised from the RM), rollout batch
{a.fixed_batch}, one answer per prompt, minibatches of {min(MINIBATCH, a.fixed_batch)}, one PPO epoch (the stage's
default is 4: one keeps the curves short, and the training phase scales with it), max_new_tokens
{", ".join(map(str, a.lengths))}; CPU seconds per iteration ({a.iterations} iteration(s) per point). The untrained model
stops at `<|end|>` now and then, so answers average fewer tokens than the cap, but the decode loop runs
until the last answer of the batch stops, and scoring and training pad every answer to the longest: the
work of an iteration follows the longest answer of its batch (averaged over the iterations), and the fit is
against that.

{table(["max_new_tokens", *ppo_head], ppo_rows(a.lengths, len_best))}

Fit: **{1000 * f_len["slope"]:.1f} CPU-ms per iteration for each more token of the longest answer** (one
more decode step of the {a.fixed_batch}-row batch and one more padded column in scoring and training;
{1000 * f_len["slope"] / a.fixed_batch:.2f} CPU-ms per row and token, all phases), {f_len["fixed"]:.2f} CPU-s fixed;
log-log exponent **{f_len["exponent"]:.2f}** (by phase: {phase_exp(len_x, len_best)}). Generation is one forward
of the batch per decode step (over a static cache as wide as prompt + max_new_tokens), so it grows about in
proportion to the steps; scoring and training forward whole padded sequences but also hold work that does
not grow with the length (the optimiser steps, each forward's fixed overhead), so their exponents stay below
1 at these lengths.

![PPO iteration time against response length](img/bench_ppo_length.png)

### One PPO iteration against rollout batch

The same stage at {a.fixed_length} new tokens and rollout batch {", ".join(map(str, a.batches))} (episodes per
iteration), minibatches of {MINIBATCH} (so the optimiser steps per iteration grow with the batch), one PPO epoch.

{table(["rollout batch", *ppo_head], ppo_rows(a.batches, batch_best))}

Fit: **{1000 * f_batch["slope"]:.1f} CPU-ms per episode**, {f_batch["fixed"]:.2f} CPU-s fixed per iteration;
log-log exponent **{f_batch["exponent"]:.2f}** (by phase: {phase_exp(a.batches, batch_best)}).
With one thread there is no parallel hardware for a wider batch to fill: it amortises the per-step cost
that does not depend on the batch (Python and operator dispatch, a larger share in the decode loop, one
small forward per token), while scoring and training run a fixed number of sequences per forward and per
optimiser step, so they grow about in proportion.

![PPO iteration time against rollout batch](img/bench_ppo_batch.png)

### bf16 against fp32

tiller's `mixed_precision: bf16` is `torch.autocast(bfloat16)` around the training forwards (the RM's and
SFT's steps; PPO's scoring forwards and its update), with fp32 weights (`tiller.training.autocast`). The
PPO stage samples with the policy's fp32 weights either way, so its generation phase is the same code in
both columns; under bf16 its scoring phase also runs the policy's old-logprob forward that fp32 takes from
the sampler (so the first minibatch's ratio is exactly 1), one forward more. A sampler that loads a bf16 checkpoint for sampling only (`load_policy(..., trainable=False)`
keeps the checkpoint's dtype, as best-of-n does) decodes with bf16 weights: that is the "bf16 weights"
row; "bf16 autocast" is the decode loop run under the same autocast as training. Same stage, same data,
same seeds; fp32 is the best of {a.repeats} runs (decode: of {a.repeats + 1}), bf16 one run (at about ten times
the cost, one run's noise does not move the ratio much).

{table(["what", "fp32", "bf16", "bf16 / fp32"], precision_rows)}

**This CPU**: {cpu["model"]}; torch's CPU kernels run at the `{cpu["capability"]}` level. It has {cpu["has"]}
and lacks {cpu["lacks"]}: no instruction computes in bf16, and a bf16 matrix product of the model's shapes
costs {gemm_lo:.0f} to {gemm_hi:.0f} times the fp32 one here (the last rows); the stage-level ratios follow
from that. **Result: {verdict}** (bf16 / fp32 CPU time: RM epoch {ratio["RM training epoch (K=4)"]:.2f}x, PPO
iteration {ratio["PPO iteration, all"]:.2f}x, decode with bf16 weights {ratio["decode loop, bf16 weights"]:.2f}x).
On such a CPU use `mixed_precision: no`. bf16 is meant for hardware that computes in it (GPUs, CPUs with
AVX512-BF16 or AMX) and for memory (half the bytes per saved activation; docs/scaling.md); nothing here
measures that case.

![bf16 against fp32](img/bench_bf16.png)
"""


if __name__ == "__main__":
    main()
