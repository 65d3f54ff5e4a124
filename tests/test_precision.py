"""``mixed_precision: bf16`` and ``gradient_checkpointing`` on a whole stage: the model still learns, its
weights stay fp32, and checkpointing changes nothing but memory. (The PPO update's equalities are in
tests/test_ppo_maths.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig

from tiller.models import ScalarModel, enable_gradient_checkpointing, load_tokenizer
from tiller.stages.sft import SFTConfig, sft
from tiller.training import autocast


def run_sft(tiny_base_dir, tiny_world_dir, out, **kw) -> dict:
    cfg = SFTConfig(epochs=2, batch_size=16, lr=2e-3, report_to=[], **kw)
    return sft(cfg, str(tiny_base_dir), tiny_world_dir / "demos.jsonl", out, out.parent / "logs")


def test_sft_in_bf16_with_checkpointing_learns_and_saves_fp32(tiny_base_dir, tiny_world_dir, tmp_path):
    plain = run_sft(tiny_base_dir, tiny_world_dir, tmp_path / "fp32")
    mixed = run_sft(tiny_base_dir, tiny_world_dir, tmp_path / "bf16", mixed_precision="bf16",
                    gradient_checkpointing=True)
    checkpointed = run_sft(tiny_base_dir, tiny_world_dir, tmp_path / "ckpt", gradient_checkpointing=True)
    assert checkpointed["loss/eval"] == pytest.approx(plain["loss/eval"], rel=1e-4)  # memory only
    assert mixed["loss/eval"] != plain["loss/eval"]  # bf16 really ran
    assert mixed["loss/eval"] == pytest.approx(plain["loss/eval"], rel=0.05)  # and learned as much
    saved = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) in ("float32", None)
    assert AutoConfig.from_pretrained(tmp_path / "bf16").use_cache is not False  # sampling keeps its cache


def test_a_reward_model_checkpoints_its_transformer(tiny_base_dir):
    rm = ScalarModel.from_pretrained(tiny_base_dir, load_tokenizer(tiny_base_dir))
    enable_gradient_checkpointing(rm)
    assert rm.hf.base_model.gradient_checkpointing


def test_autocast_runs_bf16_only_when_asked():
    x = torch.ones(2, 2)
    with autocast("bf16", "cpu"):
        assert (x @ x).dtype == torch.bfloat16
    with autocast("no", "cpu"):
        assert (x @ x).dtype == torch.float32
