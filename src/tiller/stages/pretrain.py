"""Stage 0: train a tokenizer and pretrain a small causal LM on a corpus (the embedded world's, by default).

Stands in for GPT-3 in the recipe: a model that knows the world and the chat format but is not aligned.
The result is a plain ``save_pretrained`` folder that ``AutoModelForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from tiller import distributed
from tiller.chat import SPECIAL_TOKENS
from tiller.config import ConfigError, field
from tiller.models import PAD, enable_gradient_checkpointing
from tiller.runs import atomic_dir, clean_other_fingerprints, done_metrics, fingerprint, write_manifest
from tiller.tracking import Tracker
from tiller.training import (
    CHECKPOINTING_HELP,
    PRECISION_HELP,
    Checkpointer,
    Precision,
    autocast,
    gather_weights,
    make_accelerator,
    make_optimizer,
    optimizer_step,
    progress,
    set_seed,
    start_processes,
)

EOT = "<|endoftext|>"


@dataclass
class PretrainConfig:
    vocab_size: int = field(768, help="BPE vocabulary size; small vocabularies train much faster on CPU")
    arch: Literal["gpt2", "llama"] = field("gpt2", help="transformers architecture of the base model")
    n_layer: int = field(4, help="transformer blocks")
    n_head: int = field(4, help="attention heads")
    n_embd: int = field(128, help="hidden size")
    block_size: int = field(128, help="training sequence length (documents are packed)")
    max_positions: int = field(256, help="longest sequence the model accepts (prompt + answer)")
    batch_size: int = field(32, help="sequences per step")
    lr: float = field(3e-3, help="peak learning rate (cosine schedule with warmup)")
    weight_decay: float = field(0.1, help="AdamW weight decay on matrices")
    max_tokens: int = field(3_000_000, help="training tokens (steps = max_tokens / (batch_size*block_size))")
    max_minutes: float = field(0.0, help="time budget: the learning rate anneals by whichever of steps or time "
                               "runs out first, and training stops at the budget (0: no limit)")
    eval_batches: int = field(20, help="validation batches for perplexity")
    checkpoint_every: int = field(200, help="steps between resumable checkpoints")
    mixed_precision: Precision = field("no", help=PRECISION_HELP)
    gradient_checkpointing: bool = field(False, help=CHECKPOINTING_HELP)
    seed: int = field(0, help="random seed")
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], help="trackers: tensorboard, wandb, ...")

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.block_size > self.max_positions:
            raise ConfigError("block_size must be <= max_positions")
        if self.vocab_size < 300:
            raise ConfigError("vocab_size must be >= 300 (256 bytes + special tokens + merges)")


def read_corpus(path: str | Path) -> list[str]:
    """Documents from a JSONL of ``{"text": ...}`` or a plain text file (documents split by blank lines)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"corpus file {p} does not exist")
    if p.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    docs.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ConfigError(f"{p}:{i}: field 'text': expected a JSON object with a 'text' string") from None
        return docs
    return [d for d in p.read_text().split("\n\n") if d.strip()]


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with the chat markers, a pad and an end-of-text token as single special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [EOT, PAD, *SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOT,
        pad_token=PAD,
        additional_special_tokens=[t for t in SPECIAL_TOKENS],
        model_max_length=1 << 30,
    )


def build_model(cfg: PretrainConfig, tok: PreTrainedTokenizerFast) -> torch.nn.Module:
    common = dict(vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    config: PretrainedConfig
    if cfg.arch == "gpt2":
        config = GPT2Config(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                            n_positions=cfg.max_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    else:
        config = LlamaConfig(num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                             num_key_value_heads=cfg.n_head, hidden_size=cfg.n_embd,
                             intermediate_size=4 * cfg.n_embd, max_position_embeddings=cfg.max_positions, **common)
    return AutoModelForCausalLM.from_config(config)


def pack(docs: list[str], tok: PreTrainedTokenizerBase, block_size: int) -> torch.Tensor:
    """Concatenate documents separated by end-of-text and cut into blocks. (N, block_size)"""
    ids: list[int] = []
    for enc in tok(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(tok.eos_token_id)
    n = len(ids) // block_size
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)


@torch.no_grad()
def perplexity(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int, max_batches: int) -> float:
    """exp of the token-mean loss over the first ``batch_size * max_batches`` blocks; ranks split them, a rank
    short of blocks running as many forwards as the others on copies without targets (ZeRO-3 gathers in
    every one)."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)  # summed loss, tokens
    idx, real = distributed.padded_share(range(min(len(blocks), batch_size * max_batches)))
    for i in range(0, len(idx), batch_size):
        x = blocks[idx[i : i + batch_size]].to(next(model.parameters()).device)
        n = min(max(real - i, 0), len(x))  # real blocks in this batch: the first n
        labels = x.clone()
        labels[n:] = -100
        loss = model(input_ids=x, labels=labels).loss  # the mean over the real blocks' tokens
        if n:
            total += torch.tensor([loss.item() * x[:n].numel(), x[:n].numel()], dtype=torch.float64)
    model.train()
    loss_sum, count = distributed.all_sum(total).tolist()
    return math.exp(loss_sum / max(count, 1))


def pretrain(cfg: PretrainConfig, corpus_train: Path, corpus_valid: Path, out: Path, log_dir: Path,
             force: bool = False) -> dict:
    """Train tokenizer + model; returns metrics (``eval/perplexity``...). Skips if already done."""
    fp = fingerprint("pretrain", cfg, {"train": corpus_train, "valid": corpus_valid})
    if not force and (done := done_metrics(out, fp)) is not None:
        return done
    set_seed(cfg.seed)
    train_docs, valid_docs = read_corpus(corpus_train), read_corpus(corpus_valid)
    # tied to the fingerprint: a changed config never resumes a stale checkpoint
    ckpt_dir = out.with_name(f".{out.name}.ckpt-{fp}")
    clean_other_fingerprints(out, ("ckpt", "tokenizer"), fp)
    tok_dir = out.with_name(f".{out.name}.tokenizer-{fp}")
    # resume: the tokenizer must be the one the checkpoint used; one process trains it, every rank loads it
    start_processes()  # so that the barrier below holds the other ranks until it is written
    if distributed.is_main() and (force or not tok_dir.is_dir()):
        with atomic_dir(tok_dir) as tmp:
            train_tokenizer(train_docs, cfg.vocab_size).save_pretrained(tmp)
    distributed.barrier()
    tok = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    train_blocks, valid_blocks = pack(train_docs, tok, cfg.block_size), pack(valid_docs, tok, cfg.block_size)
    if len(train_blocks) == 0 or len(valid_blocks) == 0:
        raise ConfigError(f"corpus too small for block_size {cfg.block_size}")
    model = build_model(cfg, tok)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    steps = max(1, cfg.max_tokens // (cfg.batch_size * cfg.block_size))
    acc = make_accelerator()
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    start = time.time()
    budget = cfg.max_minutes * 60
    clock = {"elapsed": 0.0}  # the main process's, so every rank anneals and stops at the same step

    def lr_factor(step: int) -> float:
        """Warmup, then cosine over progress = the further of steps done and time used (a slow machine still
        ends annealed instead of being cut off at a high learning rate)."""
        warm = max(1, int(0.05 * steps))
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        if budget:
            progress = max(progress, clock["elapsed"] / budget)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    n_params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions them
    model, opt, sched = acc.prepare(model, opt, sched)
    ckpt = Checkpointer(ckpt_dir, acc)
    if force:
        ckpt.clear()
    state = ckpt.load() or {"step": 0}
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(train_blocks), generator=gen)
    tracker = Tracker(log_dir, "pretrain", cfg.report_to)
    bar = progress(steps, f"pretrain ({n_params / 1e6:.2f}M params)")
    bar.update(state["step"])
    tokens_seen = 0
    model.train()
    step = state["step"]
    while step < steps:
        i = (step * cfg.batch_size) % len(order)
        idx = order[i : i + cfg.batch_size]
        if len(idx) < cfg.batch_size:  # wrap around: next epoch
            idx = torch.cat([idx, order[: cfg.batch_size - len(idx)]])
        # this rank's block of the global batch: blocks are all block_size long, so its share of the
        # global mean is its share of the blocks
        lo, hi = distributed.shard_bounds(len(idx))
        x = train_blocks[idx[lo:hi] if hi > lo else idx[:1]].to(acc.device)
        with autocast(cfg.mixed_precision, acc.device):
            local = model(input_ids=x, labels=x).loss
        if budget:
            clock["elapsed"] = distributed.broadcast(time.time() - start)
        optimizer_step(acc, model, distributed.global_share(local, len(idx)) * (hi - lo), opt, sched)
        loss = distributed.all_sum(local.detach() * (hi - lo)) / len(idx)
        step += 1
        tokens_seen += len(idx) * cfg.block_size
        bar.update(1)
        if step % 10 == 0 or step == steps:
            tps = tokens_seen / (time.time() - start)
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tps:.0f}")
            tracker.log({"loss/train": loss.item(), "charts/tokens_per_s": tps, "charts/lr": sched.get_last_lr()[0]}, step)
        if step % cfg.checkpoint_every == 0 and step < steps:
            ckpt.save({"step": step})
        if budget and clock["elapsed"] > budget:
            break
    bar.close()
    ppl = perplexity(acc.unwrap_model(model), valid_blocks, cfg.batch_size, cfg.eval_batches)
    metrics = {"eval/perplexity": ppl, "loss/train": loss.item(), "params": n_params, "steps": step,
               "tokens": step * cfg.batch_size * cfg.block_size, "seconds": time.time() - start}
    tracker.log(metrics, step)
    tracker.close()
    weights = gather_weights(acc, model)  # under ZeRO-3: the whole model, on the main process
    if distributed.is_main():
        with atomic_dir(out) as tmp:
            acc.unwrap_model(model).save_pretrained(tmp, state_dict=weights)
            tok.save_pretrained(tmp)
            write_manifest(tmp, stage="pretrain", fingerprint=fp, config=cfg, seed=cfg.seed, metrics=metrics,
                           inputs={"train": str(corpus_train), "valid": str(corpus_valid)})
    ckpt.clear()  # every rank: it waits for the others
    if distributed.is_main():
        shutil.rmtree(tok_dir, ignore_errors=True)
    return metrics
