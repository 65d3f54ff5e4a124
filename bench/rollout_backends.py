"""Rollout backends at a 0.5B shape: tiller's decode loop (static KV cache) against the vLLM rollout server
(``sampler: vllm``), on the same random Qwen2-0.5B-shaped weights as ``bench/ppo_0p5b.py``.

    bash scripts/setup_vllm.sh                                   # once: the server's own environment
    python bench/rollout_backends.py --work /tmp/ppo05 [--markdown PATH]

For each batch shape (prompts x new tokens) it measures, after an untimed warm-up of each:

- wall seconds and CPU seconds (user + system; the loop's in this process, the engine's in the server
  process, read from /proc) of greedy generation, best of ``--repeats``;
- whether the greedy tokens are equal (the engine must sample the same policy);
- a weight push: the trainer writing the state dict to a safetensors file, and the engine loading it in
  place; then greedy tokens again, which must equal the loop's on the new weights.

Both sides get the same threads (``--threads``, default 2: the whole machine; the engine's OpenMP pool is
not bound to cores, ``VLLM_CPU_OMP_THREADS_BIND=nobind``). Every answer runs to the full length: the stop
ids are left out, so both decode the same number of tokens whatever random weights say.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table, tiny_world  # noqa: E402
from ppo_0p5b import build_models, rss_tree  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system seconds of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def server_pid() -> int:
    """The rollout server among this process's descendants."""
    for pid in rss_tree(os.getpid()):
        if pid != os.getpid() and b"tiller.rollout_server" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise RuntimeError("no rollout server process found")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/tiller-ppo-0.5b"))
    ap.add_argument("--shapes", nargs="+", default=["8x32", "32x64"], help="prompts x new tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--markdown", type=Path, help="write the results as a markdown section here")
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # the server inherits it

    import torch

    from tiller.data import read_records
    from tiller.models import load_policy
    from tiller.rollout import generate
    from tiller.vllm_rollout import VLLMConfig, start_server

    torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    tiny_world(a.work)
    policy_dir, _ = build_models(a.work, a.work / "world")
    model, tok = load_policy(str(policy_dir), trainable=False)
    pool = [p.prompt for p in read_records(a.work / "world/prompts.jsonl", "prompt")]

    class NoStops:  # every answer decodes the full length on both sides
        def __init__(self, server):
            self.server = server

        def sample(self, prompt_ids, seeds, **kw):
            return self.server.sample(prompt_ids, seeds, **{**kw, "stop_ids": []})

    import tiller.rollout as rollout

    real_stops = rollout.sampling_stops
    rollout.sampling_stops = lambda tok: ([], set())  # the loop: no stop ids either
    rows, start = [], time.time()
    config = VLLMConfig(start_timeout=900)
    t0 = time.time()
    with start_server(policy_dir, config, a.work / "rollout-server.log") as server:
        started = time.time() - t0
        server.folder = a.work / "push"
        pid = server_pid()
        engine = NoStops(server)
        for shape in a.shapes:
            b, t = (int(x) for x in shape.split("x"))
            prompts = pool[:b]
            best = {"loop": (1e9, 1e9), "vllm": (1e9, 1e9)}
            outs = {}
            for rep in range(a.repeats + 1):  # the first is the warm-up
                for name in ("loop", "vllm"):
                    w0, c0 = time.perf_counter(), (time.process_time() if name == "loop" else cpu_seconds(pid))
                    ro = generate(model, tok, prompts, temperature=0.0, max_new_tokens=t, batch_size=b,
                                  server=engine if name == "vllm" else None)
                    wall = time.perf_counter() - w0
                    cpu = (time.process_time() if name == "loop" else cpu_seconds(pid)) - c0
                    outs[name] = ro.response_ids
                    if rep:
                        best[name] = min(best[name], (wall, cpu))
            equal = outs["loop"] == outs["vllm"]
            tokens = sum(len(r) for r in outs["loop"])
            rows.append([shape, tokens, f"{best['loop'][0]:.2f}", f"{best['vllm'][0]:.2f}",
                         f"{best['loop'][0] / best['vllm'][0]:.2f}x", f"{best['loop'][1]:.1f}", f"{best['vllm'][1]:.1f}",
                         f"{best['loop'][1] / best['vllm'][1]:.2f}x", "yes" if equal else "NO"])
            print(rows[-1], flush=True)
        # a weight push, then greedy tokens on the new weights
        torch.manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        w0 = time.perf_counter()
        load_s = server.push(model, "moved")
        push_s = time.perf_counter() - w0
        b, t = (int(x) for x in a.shapes[0].split("x"))
        after = (generate(model, tok, pool[:b], temperature=0.0, max_new_tokens=t).response_ids
                 == generate(model, tok, pool[:b], temperature=0.0, max_new_tokens=t, server=engine).response_ids)
        server_rss = rss_tree(pid)[pid] / GIB
    rollout.sampling_stops = real_stops
    headers = ["prompts x tokens", "tokens", "loop wall s", "vLLM wall s", "vLLM speed-up (wall)", "loop CPU-s",
               "vLLM CPU-s", "vLLM speed-up (CPU)", "same greedy tokens"]
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    text = "\n".join([
        "## Rollout backends at a 0.5B shape: decode loop against the vLLM rollout server (`bench/rollout_backends.py`)",
        "",
        "```",
        "bash scripts/setup_vllm.sh && python bench/rollout_backends.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"Random Qwen2-0.5B-shaped weights ({n_params:.0f}M parameters, fp32), greedy decoding to the full length "
        f"(no stop ids), {a.threads} thread(s) on each side, best of {a.repeats} after a warm-up. The loop is "
        "tiller's static-cache decode loop in the trainer's process; vLLM is `vllm-cpu` 0.32 in the rollout "
        "server (`.venv-vllm`), reached over HTTP, its CPU time read from /proc.",
        "",
        table(headers, rows),
        "",
        f"Weight push (trainer writes a safetensors file, the engine reloads in place): {push_s:.2f} s in all, of "
        f"which the engine's load {load_s:.2f} s. Greedy tokens after the push equal the loop's on the new weights: "
        f"{'yes' if after else 'NO'}. The server started in {started:.0f} s; its resident memory: "
        f"{server_rss:.2f} GiB (weights, 1 GiB KV cache, vLLM). Total {time.time() - start:.0f} s.",
        "",
    ])
    print(text)
    if a.markdown:
        a.markdown.write_text(text)


if __name__ == "__main__":
    main()
