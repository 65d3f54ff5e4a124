"""Every benchmark in bench/, each in its own process, and docs/benchmarks.md rewritten from their sections.

    python bench/run_all.py                      # 10 to 14 minutes on the 2-core VM; rewrites docs/benchmarks.md
    python bench/run_all.py --only curves        # one of them; the file goes to --work, docs/ is left alone
    python bench/run_all.py --all                # also the slow ones (over half an hour)

What runs, in this order, with settings that fit 15 minutes on the shared 2-core VM together:

- ``rm_throughput.py`` as its defaults (K=4 and 9, 16 rankings, best of 2; under a minute);
- ``ppo_throughput.py --repeats 2`` (six tiller sides and TRL, 4 iterations each; 1 to 2 minutes, a minute
  more when inductor's cache is cold and the decode step compiles from scratch);
- ``ppo_variants.py --repeats 10`` in ``ppo_throughput``'s folder, so it times the same model and RM
  (20 to 40 s);
- ``curves.py`` as its defaults (RM against K, PPO against length and batch, bf16 against fp32, with the
  plots in docs/img; 2 to 3 minutes);
- ``rloo_0p5b.py --sides tiller-rloo trl-rloo`` whenever the file exists: tiller's RLOO against TRL's at a
  0.5B shape, the like-for-like pair (about 6 minutes; it builds its models once in its own folder). Its
  third side, tiller-ppo, adds about 3 minutes and runs with ``--all``;
- ``label_load.py --seconds 15`` (the labeling app under 50 concurrent labelers; about 20 s).

Each script given ``--markdown FILE`` writes its own section (heading, exact command, what runs, tables,
what they mean); ``label_load.py`` has no such option, so its section here holds its docstring's summary
and what it printed. Left out unless ``--all``, because either alone would break the 15 minutes:
``plan_check.py`` (about 12 minutes: three model sizes, each case in fresh processes) and
``ppo_0p5b.py`` (about 5 minutes; the 0.5B shape is still timed by ``rloo_0p5b.py``). Their figures are in
docs/scaling.md; with ``--all`` their printed output goes in a section as well. ``rollout_backends.py`` (the
vLLM rollout server against the decode loop at 0.5B: one shape here, two with ``--all``; about 3 minutes,
most of it building the model and starting the server) runs when the vLLM environment of
``scripts/setup_vllm.sh`` exists, and is left out without a word otherwise.
A script in bench/ that this list does not name is reported in the header as not run.

Every child runs with one thread (``OMP_NUM_THREADS=1``). The header of the file records the machine, the
library versions, the date, the load average and the time of each benchmark. If a benchmark fails, the
file is written to ``--work`` instead of docs/ and the exit status is 1.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Bench:
    name: str  # the script is bench/{name}.py
    args: list[str] = field(default_factory=list)
    markdown: bool = True  # the script writes its own section with --markdown FILE
    work: str | None = None  # --work subfolder of run_all's folder (None: the script's own default)
    slow: bool = False  # only with --all
    optional: bool = False  # run only if the file exists (and ``requires``)
    requires: str = ""  # a path under the repository root the benchmark needs (an environment it runs in)
    title: str = ""  # the heading of the section run_all writes for a script without --markdown
    note: str = ""  # why a slow one is left out, and where its figures are
    all_args: list[str] | None = None  # the arguments under --all, where they differ


BENCHES = [
    Bench("rm_throughput", work="rm"),
    Bench("ppo_throughput", ["--repeats", "2"], work="ppo"),
    Bench("ppo_variants", ["--repeats", "10"], work="ppo"),
    Bench("curves", work="curves"),
    # the like-for-like pair only: its third side (tiller-ppo, about 3 minutes) runs with --all
    Bench(
        "rloo_0p5b",
        ["--sides", "tiller-rloo", "trl-rloo"],
        optional=True,
        all_args=[],
        note="the like-for-like pair only: its third side, tiller-ppo against the same TRL RLOO, adds about 3 "
        "minutes",
    ),
    Bench("label_load", ["--seconds", "15"], markdown=False, title="The labeling app under load"),
    Bench(
        "ppo_0p5b",
        markdown=False,
        slow=True,
        title="A 0.5B-class PPO, one and two processes",
        note="a 0.5B-class PPO in one and two processes, about 5 minutes; docs/scaling.md has its command, "
        "setup and table",
    ),
    Bench(
        "plan_check",
        markdown=False,
        slow=True,
        title="The memory planner against peak RSS",
        note="the memory planner against peak RSS, about 12 minutes; docs/scaling.md has its command and table",
    ),
    Bench(
        "rollout_backends",
        ["--threads", "1", "--shapes", "8x32", "--repeats", "1"],
        work="rollout",
        optional=True,
        requires=".venv-vllm/bin/python",
        all_args=["--threads", "1", "--shapes", "8x32", "16x64", "--repeats", "1"],
        note="the vLLM rollout server against the decode loop at a 0.5B shape; it needs the vLLM environment "
        "of scripts/setup_vllm.sh",
    ),
]
HELPERS = {"common", "run_all"}


@dataclass
class Outcome:
    bench: Bench
    command: str
    rc: int
    wall: float
    cpu: float
    load: tuple[float, float]
    section: str


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(bench: Bench, work: Path, timeout: float, everything: bool) -> Outcome:
    """One benchmark in its own process, its output to ``work/logs/NAME.log``; its section."""
    script = HERE / f"{bench.name}.py"
    given = bench.all_args if everything and bench.all_args is not None else bench.args
    args = list(given)
    if bench.work:
        args += ["--work", str(work / bench.work)]
    md = work / "sections" / f"{bench.name}.md"
    md.unlink(missing_ok=True)
    if bench.markdown:
        args += ["--markdown", str(md)]
    log = work / "logs" / f"{bench.name}.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    shown = shlex.join(["python", f"bench/{bench.name}.py", *given])
    print(f"{shown}  (log: {log})", flush=True)
    load0, start, cpu0 = os.getloadavg()[0], time.perf_counter(), children_cpu()
    with log.open("w") as out:
        try:
            rc = subprocess.run(
                [sys.executable, str(script), *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu0
    print(f"  exit {rc}, {wall:.0f} s wall, {cpu:.0f} CPU-s", flush=True)
    text = log.read_text(errors="replace")
    if rc != 0 or (bench.markdown and not md.is_file()):
        section = failed_section(bench, shown, rc, text)
    elif bench.markdown:
        section = md.read_text()
    else:
        section = printed_section(bench, shown, text, wall)
    return Outcome(bench, shown, rc, wall, cpu, (load0, os.getloadavg()[0]), section)


def summary(script: Path) -> str:
    """A script's docstring without its example commands (the indented paragraphs), read without importing it."""
    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    return "\n\n".join(p for p in doc.split("\n\n") if not p.startswith("    "))


def printed_section(bench: Bench, command: str, text: str, wall: float) -> str:
    """The section of a script without ``--markdown``: what its docstring says and the end of what it printed."""
    lines = [ln for ln in text.splitlines() if "Warning" not in ln and "warnings.warn" not in ln][-40:]
    printed = "\n".join(lines)
    return (
        f"## {bench.title} (`bench/{bench.name}.py`)\n\n```\n{command}\n```\n\n"
        f"Took {wall:.0f} s. From the script's docstring:\n\n{summary(HERE / f'{bench.name}.py')}\n\n"
        "What it printed (the end):\n\n"
        f"```\n{printed}\n```\n"
    )


def failed_section(bench: Bench, command: str, rc: int, text: str) -> str:
    tail = "\n".join(text.splitlines()[-25:])
    return f"## `bench/{bench.name}.py`: FAILED (exit {rc})\n\n```\n{command}\n```\n\n```\n{tail}\n```\n"


def numbered(sections: list[str]) -> list[str]:
    """``## Title`` -> ``## 3. Title``, in order (subsections ``###`` keep their place under the last one)."""
    out, n = [], 0
    for s in sections:
        s = s.strip()
        if s.startswith("## "):
            n += 1
            s = f"## {n}. {s[3:]}"
        out.append(s)
    return out


def machine() -> dict[str, str]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in info.splitlines() if ":" in ln}
    model = f"{cpu.get('model name', '?')} (cpu family {cpu.get('cpu family', '?')}, model {cpu.get('model', '?')})"
    mem = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").is_file() else ""
    kib = re.search(r"MemTotal:\s+(\d+)", mem)
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:
        gpu = "?"
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "ram": f"{int(kib.group(1)) / 2**20:.0f} GiB" if kib else "?",
        "gpu": gpu,
        "python": platform.python_version(),
        **{p: version(p) for p in ("torch", "transformers", "trl", "peft")},
    }


def why_not(b: Bench) -> str:
    return (
        "no such file yet" if not (HERE / f"{b.name}.py").is_file() else "over the budget; runs with `--all`"
    )


def header(
    outcomes: list[Outcome], skipped: list[Bench], total: float, when: datetime.datetime, everything: bool
) -> str:
    m = machine()
    loads = [x for o in outcomes for x in o.load]
    rows = "\n".join(
        f"| `bench/{o.bench.name}.py` | {'ok' if o.rc == 0 else f'FAILED ({o.rc})'} | {o.wall:.0f} s | "
        f"{o.cpu:.0f} |"
        for o in outcomes
    )
    slow = [
        f"`bench/{b.name}.py` ({b.note})" for b in skipped if b.slow and (HERE / f"{b.name}.py").is_file()
    ]
    trimmed = [
        f"`{o.command}` ({o.bench.note})" for o in outcomes if o.bench.all_args is not None and not everything
    ]
    not_run = (
        f"\nNot run here, to stay within 15 minutes: {'; '.join(slow)}. Run in part: {'; '.join(trimmed) or 'none'}. "
        "`python bench/run_all.py --all` runs all of it.\n"
        if slow or trimmed
        else ""
    )
    known = {b.name for b in BENCHES} | HELPERS
    unknown = sorted(p.stem for p in HERE.glob("*.py") if p.stem not in known)
    left_out = "".join(
        f"\n| `bench/{name}.py` | not run (not in `bench/run_all.py`'s list: add it there) | | |"
        for name in unknown
    ) + "".join(f"\n| `bench/{b.name}.py` | not run ({why_not(b)}) | | |" for b in skipped)
    return f"""# Benchmarks: tiller against TRL, and what its stages cost

This file is written by `python bench/run_all.py` (run {when:%Y-%m-%d %H:%M} UTC, {total / 60:.1f} minutes in
all): do not edit it by hand; each section's text lives in its script. Every figure below was measured by
the command shown above it in that one run; nothing is extrapolated. Figures of earlier runs are in this
file's git history.

Each section is one script of bench/: tiller's reward-model and RL stages against TRL {m["trl"]} on the same
models, data and batch shapes; how each stage's cost grows with the work it is given, and bf16 against
fp32; and whatever else bench/ holds that fits the budget (the table below says what ran).

**Machine.** {m["cpu"]}, {m["cores"]} cores, {m["ram"]} of RAM, {m["gpu"]}; Python {m["python"]}, torch
{m["torch"]}, transformers {m["transformers"]}, trl {m["trl"]}, peft {m["peft"]}. A shared VM: other people's
jobs may run at the same time (the 1-minute load average was {min(loads):.1f} to {max(loads):.1f} at the
starts and ends of the benchmarks of this run), so wall-clock times vary by up to 5x between identical runs.
For that reason the scripts:

- use one torch thread (`--threads 1`, `OMP_NUM_THREADS=1`): with two threads, every operator waits at a
  barrier for a thread that another process may have descheduled;
- report CPU seconds (user + system, all threads of the process) beside wall-clock: CPU time counts the
  work done and barely moves with other load;
- alternate the sides within one process, after an untimed warm-up of each, and report the best of the
  repeats (other load only ever slows a run down).

Read the CPU columns as the comparison and the wall columns as a sanity check.

**Model.** A fresh GPT-2 of 0.92M parameters (4 layers, 4 heads, width 128, context 256; `bench/curves.py`
uses context 512) built by `tiller.stages.pretrain.build_model`, with a 768-token BPE tokenizer trained by
`train_tokenizer` on the corpus of a tiny embedded world (`bench/common.py`). Untrained weights cost the same
FLOPs as trained ones. `--model DIR` runs the tiller-vs-TRL benchmarks on a real base model instead.

| benchmark | status | wall | CPU-s (its processes) |
|---|---|---|---|
{rows}{left_out}
{not_run}"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--only", nargs="+", default=None, help="these benchmarks (names without .py)")
    ap.add_argument("--all", action="store_true", help="also the slow ones: plan_check, ppo_0p5b")
    ap.add_argument("--timeout", type=float, default=1500, help="seconds before a benchmark is stopped")
    a = ap.parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix="tiller-bench-all-"))
    for sub in ("logs", "sections"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    when, start = datetime.datetime.now(datetime.UTC), time.perf_counter()
    chosen, skipped = [], []
    for b in BENCHES:
        wanted = b.name in a.only if a.only else (a.all or not b.slow)
        present = (HERE / f"{b.name}.py").is_file() and (not b.requires or (ROOT / b.requires).exists())
        if wanted and (present or not b.optional):
            chosen.append(b)
        elif not a.only:
            skipped.append(b)
    outcomes = [run(b, work, a.timeout, a.all) for b in chosen]
    total = time.perf_counter() - start
    text = (
        header(outcomes, skipped, total, when, a.all)
        + "\n"
        + "\n\n".join(numbered([o.section for o in outcomes]))
    )
    failed = [o.bench.name for o in outcomes if o.rc != 0]
    out = a.out if not failed and not a.only else work / "benchmarks.md"
    out.write_text(text.rstrip() + "\n")
    print(f"{len(outcomes)} benchmarks in {total / 60:.1f} minutes; wrote {out}", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)} (logs in {work / 'logs'})", file=sys.stderr)
        sys.exit(1)
    if total > 15 * 60:
        print(f"note: {total / 60:.1f} minutes, over the 15-minute budget", file=sys.stderr)


if __name__ == "__main__":
    main()
