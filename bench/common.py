"""What the tiller-vs-TRL benchmarks share: a tiny world, a tiny base model, K-wise rankings, a timer.

The model is a fresh GPT-2 of about 1M parameters (``tiller.stages.pretrain.build_model``) with a BPE
tokenizer trained on the tiny world's corpus: untrained weights cost the same FLOPs as trained ones, and
throughput is all these scripts measure. ``--model DIR`` swaps in a real base model instead.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shlex
import sys
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

ROOT = Path(__file__).resolve().parents[1]

# A world that builds in about a second; the same sizes as tests/world/conftest.py, a larger corpus
# so the tokenizer sees every prompt family.
TINY_WORLD = dict(
    n_people=8,
    n_places=4,
    n_venues=4,
    n_fake_people=6,
    n_train_users=4,
    n_valid_users=2,
    n_test_users=3,
    n_train_prompts=140,
    n_valid_prompts=14,
    n_test_per_family=5,
    n_demos=40,
    corpus_chars=60_000,
    agreement_items=0,
)


def tiny_world(work: Path, seed: int = 0) -> World:
    return build_world(WorldConfig(seed=seed, **TINY_WORLD), work / "world")


def tiny_base_model(
    work: Path, world_dir: Path, n_layer: int = 4, n_embd: int = 128, max_positions: int = 256
) -> Path:
    """A fresh ~1M-parameter GPT-2 and its tokenizer saved to ``work/base`` (a causal LM folder);
    ``work/base-{max_positions}`` for another context length."""
    out = work / ("base" if max_positions == 256 else f"base-{max_positions}")
    if (out / "config.json").is_file():
        return out
    cfg = PretrainConfig(
        vocab_size=768, n_layer=n_layer, n_head=4, n_embd=n_embd, max_positions=max_positions
    )
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
        out.append(
            Ranking(
                prompt=prompt,
                responses=responses,
                ranking=ranked["ranking"],
                labeler=world.labelers.names[labeler],
                id=f"bench-{k}-{i}",
            )
        )
    return out


def cpu_seconds() -> float:
    """User+system CPU time of this process, all threads: less sensitive than wall-clock to other load."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


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
        return (
            f"{v:.3g}"
            if isinstance(v, float) and abs(v) < 1000
            else (f"{v:.0f}" if isinstance(v, float) else str(v))
        )

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


# --- the Markdown sections bench/run_all.py assembles into docs/benchmarks.md ---------------------------


def add_markdown_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="also write this benchmark's section of docs/benchmarks.md (heading, command, what runs, "
        "the tables) to this file (bench/run_all.py collects them)",
    )


def command_block(script: str, argv: list[str] | None, args: argparse.Namespace) -> str:
    """The command as run (without ``--work``/``--markdown``, which change no figure) and every setting in
    effect, as a fenced block."""
    given = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for word in given:
        if skip:
            skip = False
            continue
        if word in ("--work", "--markdown"):
            skip = True
            continue
        if word.startswith(("--work=", "--markdown=")):
            continue
        kept.append(word)
    effect = []
    for key, value in vars(args).items():
        if key in ("work", "markdown") or value is None:
            continue
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):  # a switch: its name, or its name with no- when off
            effect.append(flag if value else f"--no-{flag[2:]}")
            continue
        if isinstance(value, Path) and value.resolve().is_relative_to(ROOT):
            value = value.resolve().relative_to(
                ROOT
            )  # the repository's own folders as the reader's checkout has them
        words = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        effect.append(f"{flag} " + " ".join(words))
    line = " ".join(["python", script, *map(shlex.quote, kept)])
    return f"```\n{line}\n    # in effect: {' '.join(effect)}\n```"


def duration(seconds: float) -> str:
    """``71.3`` -> ``1 min 11 s``."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def write_markdown(path: Path | None, text: str) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.strip() + "\n")
