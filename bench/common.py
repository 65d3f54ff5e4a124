"""What the tiller-vs-TRL benchmarks share: a tiny world, a tiny base model, K-wise rankings, a timer.

The model is a fresh GPT-2 of about 1M parameters (``tiller.stages.pretrain.build_model``) with a BPE
tokenizer trained on the tiny world's corpus: untrained weights cost the same FLOPs as trained ones, and
throughput is all these scripts measure. ``--model DIR`` swaps in a real base model instead.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TILLER_QUIET", "1")  # no tqdm bars in timed loops
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import transformers  # noqa: E402

from tiller.data import Ranking  # noqa: E402
from tiller.models import load_tokenizer  # noqa: E402
from tiller.stages.pretrain import PretrainConfig, build_model, read_corpus, train_tokenizer  # noqa: E402
from tiller.world import World, WorldConfig, build_world  # noqa: E402

transformers.logging.set_verbosity_error()  # load reports and progress bars would drown the figures
transformers.utils.logging.disable_progress_bar()
datasets.disable_progress_bars()

# A world that builds in about a second; the same sizes as tests/world/conftest.py, a larger corpus
# so the tokenizer sees every prompt family.
TINY_WORLD = dict(n_people=8, n_places=4, n_venues=4, n_fake_people=6, n_train_users=4, n_valid_users=2,
                  n_test_users=3, n_train_prompts=140, n_valid_prompts=14, n_test_per_family=5, n_demos=40,
                  corpus_chars=60_000, agreement_items=0)


def tiny_world(work: Path, seed: int = 0) -> World:
    return build_world(WorldConfig(seed=seed, **TINY_WORLD), work / "world")


def tiny_base_model(work: Path, world_dir: Path, n_layer: int = 4, n_embd: int = 128) -> Path:
    """A fresh ~1M-parameter GPT-2 and its tokenizer saved to ``work/base`` (a causal LM folder)."""
    out = work / "base"
    if (out / "config.json").is_file():
        return out
    cfg = PretrainConfig(vocab_size=768, n_layer=n_layer, n_head=4, n_embd=n_embd, max_positions=256)
    tok = train_tokenizer(read_corpus(world_dir / "corpus-train.jsonl"), cfg.vocab_size)
    model = build_model(cfg, tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    load_tokenizer(out)  # fail early if the chat markers are missing
    return out


def train_prompts(world: World) -> list:
    return [p["prompt"] for p in world.prompts if p["split"] == "train"]


def world_rankings(world: World, n: int, k: int, seed: int) -> list[Ranking]:
    """``n`` K-wise rankings by the simulated labelers of ``k`` realistic candidates each (K <= 10)."""
    rng = random.Random(seed)
    prompts = train_prompts(world)
    out = []
    for i in range(n):
        prompt = prompts[i % len(prompts)]
        responses = world.candidates(prompt, rng, k)
        labeler = i % len(world.labelers)
        ranked = world.labelers.rank(prompt, responses, labeler, rng)
        out.append(Ranking(prompt=prompt, responses=responses, ranking=ranked["ranking"],
                           labeler=world.labelers.names[labeler],
                           id=f"bench-{k}-{i}"))
    return out


class Timer:
    """Named wall-clock sections: ``with t("generation"): ...``; ``t.total[name]`` in seconds."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.total[name] = self.total.get(name, 0.0) + time.perf_counter() - start


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (pasted as is into docs/benchmarks.md)."""
    def cell(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) and abs(v) < 1000 else (f"{v:.0f}" if isinstance(v, float)
                                                                            else str(v))
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
