"""A 0.5B-class PPO on a CPU: Qwen2-0.5B's shapes (494M parameters, vocabulary 151,936, tied embeddings),
random weights, LoRA, three PPO iterations, in one process and under two (``torchrun``, gloo, one thread
each), with the peak resident memory measured and set beside the memory planner's figure.

    python bench/ppo_0p5b.py --work /tmp/ppo05                  # 1 and 2 processes, 3 iterations each
    python bench/ppo_0p5b.py --work /tmp/ppo05 --processes 1    # one process only

What runs is the real ``tiller ppo`` command: the policy with a LoRA adapter (r=16 on every linear layer of
the blocks), the reference by disabling the adapter (no second copy), a value model initialised from the
reward model with its own adapter and head, and a frozen reward model of the same shapes; gradient
checkpointing on both trained networks; fp32 weights. Random weights cost the FLOPs and bytes of trained
ones; the tokenizer is the embedded world's 768-token BPE, so only the first 768 rows of the 151,936-row
embedding are ever read (the memory is all there). Peak RSS is sampled every 0.2 s over the whole process
tree (the launcher and its ranks), from /proc; a process's Python, torch and transformers imports count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import tiny_world  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "configs/models/qwen2-0.5b.json"
GIB = 1024**3


def rss_tree(pid: int) -> dict[int, int]:
    """Resident bytes of ``pid`` and every descendant, from /proc."""
    out: dict[int, int] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        rss = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        out[p] = rss
        todo.extend(int(c) for c in children)
    return out


class PeakRSS:
    """The largest total, and each process's largest, resident memory of a process tree while it runs."""

    def __init__(self, pid: int, every: float = 0.2):
        self.pid, self.every = pid, every
        self.total, self.per_process = 0, {}  # type: int, dict[int, int]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            tree = rss_tree(self.pid)
            self.total = max(self.total, sum(tree.values()))
            for p, b in tree.items():
                self.per_process[p] = max(self.per_process.get(p, 0), b)
            time.sleep(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def build_models(work: Path, world_dir: Path) -> tuple[Path, Path]:
    """A random Qwen2-0.5B-shaped policy and a reward model of the same shapes, with the world's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from tiller.models import ScalarModel
    from tiller.stages.pretrain import read_corpus, train_tokenizer

    policy_dir, rm_dir = work / "policy-0.5b", work / "rm-0.5b"
    if (policy_dir / "config.json").is_file() and (rm_dir / "config.json").is_file():
        return policy_dir, rm_dir
    tok = train_tokenizer(read_corpus(world_dir / "corpus-train.jsonl"), 768)
    config = AutoConfig.from_pretrained(SHAPES)
    config.pad_token_id, config.eos_token_id, config.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.eos_token_id
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    print(f"policy: {sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M parameters", flush=True)
    policy.save_pretrained(policy_dir)
    tok.save_pretrained(policy_dir)
    del policy
    config.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # a reward that varies: the head reads a random direction of the last state
        rm.score.weight.normal_(0, 0.02)
    ScalarModel(rm).save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    return policy_dir, rm_dir


def ppo_args(policy: Path, rm: Path, prompts: Path, out: Path, iterations: int) -> list[str]:
    return ["ppo", "--policy", str(policy), "--ref", str(policy), "--rm", str(rm), "--prompts", str(prompts),
            "--out", str(out), "--force", f"iterations={iterations}", "rollout_batch=4", "minibatch_size=2", "ppo_epochs=1",
            "max_new_tokens=24", "eval_every=0", "eval_prompts=0", "checkpoint_every=0", "lora.r=16",
            "lora.alpha=32", "gradient_checkpointing=true", "report_to=[jsonl]"]


def run(processes: int, args: list[str], cwd: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TILLER_QUIET": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    start = time.time()
    proc = subprocess.Popen([*launcher, "-m", "tiller.cli", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak = PeakRSS(proc.pid)
    output, _ = proc.communicate()
    peak.stop()
    if proc.returncode:
        raise SystemExit(f"tiller ppo failed ({processes} processes):\n{output[-4000:]}")
    ranks = sorted(peak.per_process.values(), reverse=True)[:processes]
    return {"processes": processes, "wall_s": time.time() - start, "peak_total_gib": peak.total / GIB,
            "peak_per_rank_gib": [r / GIB for r in ranks]}


def planned(processes: int) -> float | None:
    """The planner's per-device total for the same run, in GiB (None if the planner is not installed)."""
    cmd = [sys.executable, "-m", "tiller.cli", "plan", "--model", str(SHAPES), "--stage", "ppo", "--devices",
           str(processes), "--sharding", "none", "--lora-r", "16", "--batch", str(2 // processes), "--seq-len",
           "64", "--response-len", "24", "--rollout-batch", str(4 // processes), "--gradient-checkpointing",
           "--accelerator", "cpu", "--dtype", "fp32", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        print(f"planner: {done.stderr.strip()[-500:]}", flush=True)
        return None
    return float(json.loads(done.stdout)["peak_gib"])


def baseline_gib() -> float:
    """Resident memory of a process that has imported what a stage imports and holds no model: the planner
    counts tensors only, so this is added to its figure."""
    proc = subprocess.Popen([sys.executable, "-c", "import tiller.cli, tiller.stages.ppo, time; time.sleep(3)"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    peak = PeakRSS(proc.pid)
    proc.wait()
    peak.stop()
    return peak.total / GIB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/tiller-ppo-0.5b"))
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    tiny_world(a.work)
    world_dir = a.work / "world"
    policy, rm = build_models(a.work, world_dir)
    base = baseline_gib()
    print(f"baseline (imports, no model): {base:.2f} GiB per process", flush=True)
    rows = []
    for n in a.processes:
        out = a.work / f"ppo-{n}"
        r = run(n, ppo_args(policy, rm, world_dir / "prompts.jsonl", out, a.iterations), a.work)
        m = json.loads((out / "tiller-manifest.json").read_text())["metrics"]
        plan = planned(n)
        r.update({"iteration_s": m["time/total"] / a.iterations, "planned_gib": plan + base if plan else None,
                  "score": m["objective/score"], "kl": m["objective/kl"]})
        rows.append(r)
        print(json.dumps(r), flush=True)
    print("\n| processes | s / iteration | peak RSS, all processes (GiB) | peak RSS per rank (GiB) | planner per "
          "device + baseline (GiB) | planner / measured |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        per = max(r["peak_per_rank_gib"])
        plan = r["planned_gib"]
        ratio = f"{plan / per:.2f}" if plan else "-"
        print(f"| {r['processes']} | {r['iteration_s']:.0f} | {r['peak_total_gib']:.2f} | "
              f"{', '.join(f'{x:.2f}' for x in r['peak_per_rank_gib'])} | {plan if plan is None else f'{plan:.2f}'} "
              f"| {ratio} |")
    print(f"planner figures include the {base:.2f} GiB baseline of one process's imports")


if __name__ == "__main__":
    main()
