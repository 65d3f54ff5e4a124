"""Reward-model training throughput: tiller's K-wise stage vs TRL's pairwise RewardTrainer.

    python bench/rm_throughput.py                              # K=4 and K=9, 16 rankings each, 2 repeats
    python bench/rm_throughput.py --rankings 8 --repeats 1     # quicker
    python bench/rm_throughput.py --model runs/default/base    # a real base model instead of a fresh one

Both sides train the same ~1M-parameter GPT-2 (fresh, or ``--model``) for one epoch, fp32 on CPU, on the
same K-wise rankings from the embedded world's simulated labelers. tiller runs its real stage
(``tiller.stages.reward.train_rm``): every response of a ranking goes through the model once and all
C(K,2) comparisons share the step (InstructGPT sec. 3.5). TRL gets the rankings expanded into every
(chosen, rejected) pair they imply (``tiller.data.ranking_to_pairs``), as text rendered with
``tiller.chat``; each pair forwards both of its responses, so every response is forwarded K-1 times.

Batch sizes put the same number of sequences in every forward: tiller ``B`` records of K (B*K
sequences), TRL ``B*K/2`` pairs (B*K sequences). A comparison is a labelled (better, worse) pair; ties
give none, and both sides are credited with the same count. One untimed warm-up run of each comes first;
the repeats alternate tiller and TRL so machine noise falls on both.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import Timer, table, tiny_base_model, tiny_world, world_rankings  # noqa: E402
from datasets import Dataset  # noqa: E402

from tiller.chat import END, render_prompt, render_response  # noqa: E402
from tiller.data import Ranking, ranking_to_pairs, write_jsonl  # noqa: E402
from tiller.models import ScalarModel, load_tokenizer  # noqa: E402
from tiller.stages import reward as reward_stage  # noqa: E402
from tiller.stages.reward import RMConfig, encode_records, train_rm  # noqa: E402


def cpu_seconds() -> float:
    """User+system CPU time of this process, all threads: less sensitive than wall-clock to other load."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class LoopClock:
    """Stands in for ``tiller.training.progress`` in the RM stage: the bar opens right before the training
    loop and closes right after it, so its lifetime is the loop's (wall and CPU)."""

    def __init__(self, real):
        self.real, self.wall, self.cpu, self.end_cpu = real, 0.0, 0.0, 0.0

    def __call__(self, *args, **kwargs):
        bar, clock = self.real(*args, **kwargs), self
        start_wall, start_cpu, close = time.perf_counter(), cpu_seconds(), bar.close

        def timed_close():
            clock.end_cpu = cpu_seconds()
            clock.wall, clock.cpu = time.perf_counter() - start_wall, clock.end_cpu - start_cpu
            close()

        bar.close = timed_close
        return bar


def run_tiller(model_dir: Path, rankings_file: Path, work: Path, batch_size: int, max_len: int, lr: float,
               tag: str) -> dict:
    """One epoch of the real RM stage; ``loop_s`` is its own training-loop clock (after loading/encoding)."""
    cfg = RMConfig(epochs=1, lr=lr, batch_size=batch_size, max_len=max_len, valid_fraction=0.0,
                   report_to=["none"], seed=0)
    clock = LoopClock(reward_stage.progress)
    reward_stage.progress = clock
    start = time.perf_counter()
    try:
        metrics = train_rm(cfg, str(model_dir), [rankings_file], None, work / f"rm-{tag}", work / "logs",
                           force=True)
    finally:
        reward_stage.progress = clock.real
    return {"loop_s": clock.wall, "cpu_s": clock.cpu, "total_s": time.perf_counter() - start,
            "own_pairs_per_s": metrics["pairs_per_s"]}


def trl_dataset(rankings: list[Ranking]) -> Dataset:
    """Every labelled pair as TRL's explicit-prompt text format, rendered exactly as tiller renders it."""
    rows = [{"prompt": render_prompt(p.prompt), "chosen": render_response(p.chosen),
             "rejected": render_response(p.rejected)} for r in rankings for p in ranking_to_pairs(r)]
    return Dataset.from_list(rows)


def run_trl(model_dir: Path, dataset: Dataset, work: Path, pairs_per_batch: int, max_len: int, lr: float,
            tag: str) -> dict:
    """One epoch of TRL's RewardTrainer; ``loop_s`` is ``trainer.train()``, ``total_s`` adds load + tokenize."""
    from trl import RewardConfig, RewardTrainer

    start = time.perf_counter()
    tok = load_tokenizer(model_dir)
    model = ScalarModel.from_pretrained(model_dir, tok).hf  # same init as tiller: zero head, same embeddings
    args = RewardConfig(
        output_dir=str(work / f"trl-{tag}"), per_device_train_batch_size=pairs_per_batch, num_train_epochs=1,
        learning_rate=lr, lr_scheduler_type="cosine", weight_decay=0.0, max_grad_norm=1.0, max_length=max_len,
        eos_token=END,  # answers already end with <|end|>: TRL must not append another EOS
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True,  # TRL defaults: True, True, -, -
        dataloader_num_workers=0, report_to="none", save_strategy="no", eval_strategy="no",
        logging_strategy="no", disable_tqdm=True, seed=0,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    prepared, cpu0 = time.perf_counter(), cpu_seconds()
    trainer.train()
    end, cpu = time.perf_counter(), cpu_seconds() - cpu0
    kept = trainer.train_dataset
    lengths = [len(x) for x in kept["chosen_ids"]] + [len(x) for x in kept["rejected_ids"]]
    return {"loop_s": end - prepared, "cpu_s": cpu, "total_s": end - start, "pairs_kept": len(kept),
            "mean_tokens": sum(lengths) / len(lengths)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rankings", type=int, default=16, help="ranking records per K")
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 9], help="responses per ranking (<= 10)")
    ap.add_argument("--records-per-step", type=int, default=8, help="tiller batch (TRL: records*K/2 pairs)")
    ap.add_argument("--max-len", type=int, default=256, help="tokens per prompt+response (both sides)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None, help="a causal LM folder (default: a fresh tiny GPT-2)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: torch's default); 1 keeps a shared machine's other load from "
                         "stalling a second thread at every barrier")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    work = a.work or Path(tempfile.mkdtemp(prefix="tiller-bench-rm-"))
    timer = Timer()
    with timer("setup"):
        world = tiny_world(work)
        model_dir = a.model or tiny_base_model(work, work / "world")
    tok = load_tokenizer(model_dir)
    n_params = sum(p.numel() for p in ScalarModel.from_pretrained(model_dir, tok).parameters())
    print(f"model {model_dir} ({n_params / 1e6:.2f}M params), torch threads {torch.get_num_threads()}, "
          f"setup {timer.total['setup']:.1f}s", flush=True)

    data = {}
    for k in a.ks:
        rankings = world_rankings(world, a.rankings, k, seed=k)
        path = work / f"rankings-k{k}.jsonl"
        write_jsonl(path, rankings)
        seqs = encode_records(tok, rankings, a.max_len)
        tokens = [len(s) for rec in seqs for s in rec]
        data[k] = {"file": path, "rankings": rankings, "pairs": trl_dataset(rankings),
                   "tiller_mean_tokens": sum(tokens) / len(tokens), "tiller_max_tokens": max(tokens)}
        print(f"K={k}: {len(rankings)} rankings, {len(data[k]['pairs'])} labelled pairs "
              f"(C(K,2)*N = {len(rankings) * k * (k - 1) // 2}), tokens/response mean "
              f"{data[k]['tiller_mean_tokens']:.1f} max {data[k]['tiller_max_tokens']}", flush=True)

    # warm-up (untimed): first calls pay for lazy imports, allocator growth, kernel selection
    k0 = a.ks[0]
    warm = world_rankings(world, a.records_per_step * 2, k0, seed=999)
    write_jsonl(work / "warm.jsonl", warm)
    run_tiller(model_dir, work / "warm.jsonl", work, a.records_per_step, a.max_len, a.lr, "warm")
    run_trl(model_dir, trl_dataset(warm), work, a.records_per_step * k0 // 2, a.max_len, a.lr, "warm")

    results: dict[int, dict[str, list]] = {k: {"tiller": [], "trl": []} for k in a.ks}
    for rep in range(a.repeats):
        for k in a.ks:
            d = data[k]
            t = run_tiller(model_dir, d["file"], work, a.records_per_step, a.max_len, a.lr, f"k{k}-{rep}")
            r = run_trl(model_dir, d["pairs"], work, a.records_per_step * k // 2, a.max_len, a.lr, f"k{k}-{rep}")
            if r["pairs_kept"] != len(d["pairs"]):
                print(f"warning: TRL dropped {len(d['pairs']) - r['pairs_kept']} pairs over --max-len", flush=True)
            results[k]["tiller"].append(t)
            results[k]["trl"].append(r)
            n_pairs = len(d["pairs"])
            print(f"rep {rep} K={k}: tiller {n_pairs / t['loop_s']:.1f} pairs/s ({t['loop_s']:.1f}s loop, "
                  f"{t['cpu_s']:.1f} CPU-s, {t['total_s']:.1f}s call); TRL {n_pairs / r['loop_s']:.1f} pairs/s "
                  f"({r['loop_s']:.1f}s train, {r['cpu_s']:.1f} CPU-s, {r['total_s']:.1f}s incl. load+tokenize); "
                  f"tokens/seq TRL {r['mean_tokens']:.1f}, tiller {d['tiller_mean_tokens']:.1f}", flush=True)

    rows, rows_total = [], []
    for k in a.ks:
        d, res = data[k], results[k]
        n_pairs, n_rec = len(d["pairs"]), len(d["rankings"])
        t_loop = min(x["loop_s"] for x in res["tiller"])
        r_loop = min(x["loop_s"] for x in res["trl"])
        t_cpu = min(x["cpu_s"] for x in res["tiller"])
        r_cpu = min(x["cpu_s"] for x in res["trl"])
        t_seqs, r_seqs = n_rec * k, 2 * n_pairs
        rows.append([k, n_pairs, round(n_pairs / t_loop, 1), round(n_pairs / r_loop, 1), f"{r_loop / t_loop:.2f}x",
                     round(n_pairs / t_cpu, 1), round(n_pairs / r_cpu, 1), f"{r_cpu / t_cpu:.2f}x",
                     round(1000 * t_cpu / t_seqs, 1), round(1000 * r_cpu / r_seqs, 1), f"{t_seqs} / {r_seqs}"])
        t_tot = min(x["total_s"] for x in res["tiller"])
        r_tot = min(x["total_s"] for x in res["trl"])
        rows_total.append([k, round(t_tot, 1), round(r_tot, 1), f"{r_tot / t_tot:.2f}x",
                           round(max(x["own_pairs_per_s"] for x in res["tiller"]), 1)])
    print(f"\nbest of {a.repeats} repeat(s) (other load only ever slows a run); {a.rankings} rankings per K; "
          f"tiller {a.records_per_step} records of K per step, TRL {a.records_per_step}*K/2 pairs per step (same "
          f"sequences per forward); torch threads {torch.get_num_threads()}\n")
    print(table(["K", "pairs", "tiller pairs/s (wall)", "TRL pairs/s (wall)", "ratio (wall)", "tiller pairs/CPU-s",
                 "TRL pairs/CPU-s", "ratio (CPU)", "tiller CPU-ms/seq", "TRL CPU-ms/seq", "seqs fwd (tiller / TRL)"],
                rows))
    print("\nCPU-ms/seq: training-loop CPU time per response sequence forwarded (forward+backward+step, "
          "amortised)\n")
    print(table(["K", "tiller call s", "TRL load+tokenize+train s", "ratio", "tiller own pairs_per_s metric"],
                rows_total))


if __name__ == "__main__":
    main()
