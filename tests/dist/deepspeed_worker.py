"""One rank of tests/test_deepspeed.py's partition check:
``accelerate launch --config_file configs/accelerate/deepspeed-zero3.yaml tests/dist/deepspeed_worker.py OUT``.

A tiny GPT-2 goes through ``training.make_accelerator`` and ``acc.prepare`` as in a stage and takes one
optimiser step; the rank then writes to ``OUT/rank-{rank}.json`` how much of the model it holds (DeepSpeed's
``ds_numel`` is a parameter's whole size, ``ds_tensor`` this rank's part of it), how much ``training.gathered``
lends it, and whether a model made after the accelerator is whole (``training.loading_whole``) or, made
without that context, created partitioned by transformers. The test asserts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config

from tiller import distributed
from tiller.training import (
    gathered,
    loading_whole,
    make_accelerator,
    make_optimizer,
    optimizer_step,
    snapshot_weights,
    zero_stage,
)

OUT = Path(sys.argv[1])


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)  # every rank starts from the same weights
    config = GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return AutoModelForCausalLM.from_config(config)


def numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


model = tiny()
whole = numel(model)
acc = make_accelerator()
opt = make_optimizer(model, 1e-3)
model, opt = acc.prepare(model, opt)
ids = torch.randint(1, 96, (2, 16), generator=torch.Generator().manual_seed(1))
mine = ids[distributed.rank() : distributed.rank() + 1]
optimizer_step(acc, model, model(input_ids=mine, labels=mine).loss, opt)

params = list(acc.unwrap_model(model).parameters())
report = {
    "zero_stage": zero_stage(acc),
    "world_size": distributed.world_size(),
    "whole": whole,
    "ds_numel": sum(p.ds_numel for p in params),  # the whole parameters, as DeepSpeed books them
    "held": sum(p.ds_tensor.numel() for p in params),  # this rank's partitions
}
with gathered(acc, model) as full, torch.no_grad():
    report["gathered"] = numel(full)
    report["gathered_loss"] = full(input_ids=ids, labels=ids).loss.item()  # forwards on this rank alone
# DeepSpeed keeps recently used parameters whole between forwards (stage3_max_reuse_distance); leaving
# ``gathered`` partitions them all again
report["released"] = sum(p.numel() for p in params)
snapshot = snapshot_weights(acc, model)
unique = {t.data_ptr(): t for t in snapshot.values()} if snapshot else None  # tied weights once
report["snapshot"] = sum(t.numel() for t in unique.values()) if unique else None
with loading_whole():
    report["loaded_whole"] = numel(tiny())
report["loaded_plain"] = numel(tiny())  # transformers' own zero.Init: partitioned as it is made
(OUT / f"rank-{distributed.rank()}.json").write_text(json.dumps(report))
