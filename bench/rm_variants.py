"""What-if timings for the RM step: tiller's ``forward_records`` against two proposed changes.

    python bench/rm_variants.py                    # K=9, 16 rankings, batches of 8 records
    python bench/rm_variants.py --k 4 --repeats 3

Variants, each a full epoch of the train_rm step (forward, ranking loss, backward, clip, AdamW) over the
same batches in train_rm's order, from the same initial weights:

- ``current``: ``tiller.stages.reward.forward_records`` as it is: all B*K responses padded to the longest.
- ``sorted``: the same responses sorted by length and forwarded in chunks of ``--chunk``, each padded only
  to its own longest; scores are put back in order before the loss. Right padding and a causal model make
  each score independent of its batch-mates, so loss and gradients equal ``current``'s (checked below).
- ``sorted+gelu``: as ``sorted``, with GPT-2's ``activation_function`` set to ``gelu_pytorch_tanh``: the
  same tanh approximation as ``gelu_new`` in one fused kernel instead of eight element-wise ops.

Reports CPU seconds (robust to the other load on a shared machine) and wall seconds, best of repeats.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import table, tiny_base_model, tiny_world, world_rankings  # noqa: E402
from rm_throughput import cpu_seconds  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

from tiller.batching import batch  # noqa: E402
from tiller.losses import ranking_loss, ranks_from_groups  # noqa: E402
from tiller.models import ScalarModel, load_tokenizer  # noqa: E402
from tiller.stages.reward import encode_records, forward_records  # noqa: E402
from tiller.training import make_optimizer  # noqa: E402


def forward_records_sorted(model, seqs, records, pad_id, device, chunk: int = 16):
    """``forward_records`` with length-sorted chunks: the proposed drop-in replacement. Same outputs."""
    k_max = max(len(s) for s in seqs)
    flat = [x for s in seqs for x in s]
    order = sorted(range(len(flat)), key=lambda i: len(flat[i]))
    parts = []
    for c in range(0, len(order), chunk):
        b = batch([flat[i] for i in order[c : c + chunk]], pad_id)
        parts.append(model(**{k: v.to(device) for k, v in b.items()}))
    raw = torch.cat(parts)[torch.argsort(torch.tensor(order, device=device))]  # (B*K,) back in flat order
    scores = torch.zeros(len(seqs), k_max, device=device)
    ranks = torch.zeros(len(seqs), k_max, dtype=torch.long, device=device)
    valid = torch.zeros(len(seqs), k_max, dtype=torch.bool, device=device)
    i = 0
    for row, (s, r) in enumerate(zip(seqs, records, strict=True)):
        k = len(s)
        scores[row, :k] = raw[i : i + k]
        ranks[row, :k] = torch.tensor(ranks_from_groups(r.ranking, k), device=device)
        valid[row, :k] = True
        i += k
    return scores, ranks, valid


def load(model_dir: Path, tok, gelu: bool) -> ScalarModel:
    torch.manual_seed(0)
    if not gelu:
        return ScalarModel.from_pretrained(model_dir, tok)
    hf = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1,
                                                            activation_function="gelu_pytorch_tanh")
    hf.config.pad_token_id = tok.pad_token_id
    torch.nn.init.zeros_(hf.score.weight)  # as ScalarModel.from_pretrained does
    return ScalarModel(hf)


def epoch(model: ScalarModel, tok, records, seqs, batch_size: int, fwd) -> tuple[float, float, list[float]]:
    """One epoch of train_rm's step in train_rm's order; returns (wall s, CPU s, losses)."""
    opt = make_optimizer(model, 3e-4)
    order = list(range(len(records)))
    random.Random(0).shuffle(order)
    losses = []
    model.train()
    wall, cpu = time.perf_counter(), cpu_seconds()
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        scores, ranks, valid = fwd(model, [seqs[j] for j in idx], [records[j] for j in idx], tok.pad_token_id, "cpu")
        loss, _ = ranking_loss(scores, ranks, valid)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return time.perf_counter() - wall, cpu_seconds() - cpu, losses


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=9)
    ap.add_argument("--rankings", type=int, default=16)
    ap.add_argument("--records-per-step", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=16, help="sequences per length-sorted chunk")
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    work = a.work or Path(tempfile.mkdtemp(prefix="tiller-bench-rmv-"))
    world = tiny_world(work)
    model_dir = a.model or tiny_base_model(work, work / "world")
    tok = load_tokenizer(model_dir)
    records = world_rankings(world, a.rankings, a.k, seed=a.k)
    seqs = encode_records(tok, records, a.max_len)

    def sorted_fwd(*args):
        return forward_records_sorted(*args, chunk=a.chunk)

    variants = {"current": (False, forward_records), "sorted": (False, sorted_fwd), "sorted+gelu": (True, sorted_fwd)}
    epoch(load(model_dir, tok, False), tok, records, seqs, a.records_per_step, forward_records)  # warm-up
    best: dict[str, tuple[float, float]] = {}
    losses: dict[str, list[float]] = {}
    for _ in range(a.repeats):
        for name, (gelu, fwd) in variants.items():
            wall, cpu, losses[name] = epoch(load(model_dir, tok, gelu), tok, records, seqs, a.records_per_step, fwd)
            old = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(old[0], wall), min(old[1], cpu))
            print(f"{name}: {cpu:.2f} CPU-s, {wall:.2f} s wall", flush=True)
    for name in ("sorted", "sorted+gelu"):
        diff = max(abs(x - y) for x, y in zip(losses["current"], losses[name], strict=True))
        print(f"max |loss difference| current vs {name} over the epoch: {diff:.2e}")
    base_cpu = best["current"][1]
    rows = [[n, round(best[n][1], 2), round(best[n][0], 2), f"{base_cpu / best[n][1]:.2f}x"] for n in variants]
    print(f"\nK={a.k}, {a.rankings} rankings, {a.records_per_step} records per step, chunks of {a.chunk}, "
          f"threads {torch.get_num_threads()}, best of {a.repeats}\n")
    print(table(["variant", "CPU s / epoch", "wall s / epoch", "speed-up (CPU)"], rows))


if __name__ == "__main__":
    main()
