"""The memory planner: parameter counts against real models and peft, the activation count against what
autograd saves, sharding arithmetic, and the ``tiller plan`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    LlamaConfig,
    Qwen2Config,
)
from typer.testing import CliRunner

from tiller.cli import app
from tiller.config import ConfigError
from tiller.plan import GiB, PlanConfig, model_shape, plan

TINY = {
    "gpt2-tied": GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=128),
    "llama-untied": LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=300, tie_word_embeddings=False),
    "qwen2-tied": Qwen2Config(hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=300, tie_word_embeddings=True),
}


@pytest.fixture
def saved(tmp_path):
    """``saved(config)``: the config written as a model folder, for ``model_shape``."""
    def write(config, name="model"):
        folder = tmp_path / name
        config.save_pretrained(folder)
        return str(folder)
    return write


def numel(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@pytest.mark.parametrize("name", list(TINY))
def test_counts_equal_instantiated_models(name, saved):
    config = TINY[name]
    shape = model_shape(saved(config))
    lm = AutoModelForCausalLM.from_config(config)
    one_label = type(config).from_dict({**config.to_dict(), "num_labels": 1})
    scalar = AutoModelForSequenceClassification.from_config(one_label)
    assert shape.params == numel(lm)  # tied embeddings once
    assert shape.scalar_params == numel(scalar)
    tied = name.endswith("-tied")
    assert shape.head == (0 if tied else config.vocab_size * config.hidden_size)
    assert shape.layers * shape.block + shape.root == shape.params


def test_published_sizes():
    assert model_shape("qwen2-0.5b").params == pytest.approx(494e6, rel=1e-3)
    assert model_shape("qwen2-1.5b").params == pytest.approx(1.544e9, rel=1e-3)
    assert model_shape("qwen2-7b").params == pytest.approx(7.616e9, rel=1e-3)
    assert model_shape("llama-3-70b").params == pytest.approx(70.554e9, rel=1e-3)


@pytest.mark.parametrize("name", ["gpt2-tied", "llama-untied"])  # Conv1D and Linear projections
def test_lora_count_equals_peft(name, saved):
    config = TINY[name]
    model = get_peft_model(AutoModelForCausalLM.from_config(config), LoraConfig(r=8, target_modules="all-linear"))
    assert model_shape(saved(config)).lora_params(8) == numel(model, trainable_only=True)


def saved_bytes(config, tokens: int, precision: str = "no", checkpointing: bool = False) -> int:
    """Bytes of the tensors autograd keeps for the backward of one forward (parameters excluded)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    x = torch.randint(0, config.vocab_size, (2, tokens // 2))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            model(input_ids=x, labels=x)
    return sum(storages.values())


def with_blocks(config, n: int, **changes):
    values = {k: v for k, v in config.to_dict().items() if k != "layer_types"}  # Qwen2 lists one per block
    return type(config).from_dict({**values, "num_hidden_layers": n, **changes})


def per_block(config, saved, **kw) -> tuple[float, float]:
    """(bytes autograd saves per block, the planner's), from a 1-block and a 3-block model."""
    tokens = 128
    one, three = with_blocks(config, 1), with_blocks(config, 3)
    measured = (saved_bytes(three, tokens, **kw) - saved_bytes(one, tokens, **kw)) / 2
    return measured, model_shape(saved(one, "one")).block_bytes(kw.get("precision", "no")) * tokens


@pytest.mark.parametrize("name", ["qwen2-tied", "gpt2-tied"])
def test_block_activations_match_autograd(name, saved):
    config = with_blocks(TINY[name], 2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # tiller's models: no dropout
    measured, planned = per_block(config, saved)
    assert planned == pytest.approx(measured, rel=0.1)


def test_bf16_block_activations_and_weight_copies_match_autograd(saved):
    config = TINY["qwen2-tied"]
    measured, planned = per_block(config, saved, precision="bf16")
    copies = 2 * model_shape(saved(config)).block_linear  # autocast's bf16 copies of the block's fp32 weights
    assert planned + copies == pytest.approx(measured, rel=0.1)


def test_checkpointing_keeps_each_block_input_only(saved):
    config = TINY["qwen2-tied"]
    measured, _ = per_block(config, saved, checkpointing=True)
    assert measured == 4 * config.hidden_size * 128  # one fp32 hidden state per token
    cfg = PlanConfig(model=saved(config), batch=4, seq_len=256)
    full = plan(cfg).phases["policy bwd"]["activations"]
    cfg.gradient_checkpointing = True
    assert plan(cfg).phases["policy bwd"]["activations"] < full / 2


def components(p, phase: str) -> dict[str, float]:
    return p.phases[phase]


def test_zero3_divides_weights_gradients_and_optimizer_by_devices():
    base = dict(model="qwen2-1.5b", stage="ppo", batch=2, seq_len=512)
    one = plan(PlanConfig(**base))
    four = plan(PlanConfig(**base, devices=4, sharding="zero3"))
    for phase in ("policy bwd", "step"):
        for k, v in one.phases[phase].items():
            if k.startswith(("policy", "reference", "value", "optimizer states")):  # the reward model stays whole
                assert four.phases[phase][k] == pytest.approx(v / 4), k
    assert four.phases["step"]["gradients"] == pytest.approx(one.phases["step"]["gradients"] / 4)
    assert four.phases["policy bwd"]["activations"] == one.phases["policy bwd"]["activations"]  # batch per device
    assert "gathered shards (ZeRO-3)" in four.phases["policy bwd"]
    zero2 = plan(PlanConfig(**base, devices=4, sharding="zero2"))
    assert zero2.phases["step"]["policy weights (fp32)"] == one.phases["step"]["policy weights (fp32)"]
    assert zero2.phases["step"]["optimizer states (AdamW)"] == pytest.approx(
        one.phases["step"]["optimizer states (AdamW)"] / 4)
    ddp = plan(PlanConfig(**base, devices=4))
    assert ddp.peak > one.peak  # DDP's gradient buckets


def test_ppo_models_as_the_stage_builds_them():
    s = model_shape("qwen2-0.5b")
    small = dict(model="qwen2-0.5b", stage="ppo", batch=2, seq_len=256, overhead=0)  # weights, not logits, decide
    full = plan(PlanConfig(**small))
    trained = s.params + s.scalar_params + 1  # policy, and the value model with its head's bias
    assert full.phases["step"]["optimizer states (AdamW)"] == 8 * trained
    assert full.phases["step"]["gradients"] == 4 * trained
    assert full.phases["step"]["reference weights (fp32)"] == 4 * s.params  # the reference runs in fp32
    assert full.phases["step"]["reward weights (bf16)"] == 2 * s.scalar_params
    own = plan(PlanConfig(**small, lora_r=16))
    assert not any(k.startswith("reference") for k in own.components())  # the policy with its adapter disabled
    assert own.phases["step"]["value backbone (fp32)"] == 4 * s.scalar_params
    shared = plan(PlanConfig(**small, lora_r=16, value_backbone="shared"))
    assert "value backbone (fp32)" not in shared.components()
    assert shared.phases["step"]["policy backbone (fp32)"] == 4 * s.params
    assert shared.peak < full.peak / 3
    with pytest.raises(ConfigError, match="gradient checkpointing"):
        PlanConfig(**small, lora_r=16, value_backbone="shared", gradient_checkpointing=True).validate()
    zero3 = plan(PlanConfig(**small, devices=4, sharding="zero3"))  # the reward model stays whole
    assert zero3.phases["step"]["reward weights (bf16)"] == 2 * s.scalar_params


def test_fits_verdict():
    assert plan(PlanConfig(model="qwen2-0.5b", stage="sft", lora_r=16)).fits
    big = plan(PlanConfig(model="llama-3-70b", stage="ppo"))
    assert not big.fits and big.peak > 1000 * GiB


runner = CliRunner()


def test_cli_prints_a_table_and_json():
    result = runner.invoke(app, ["plan", "--model", "qwen2-0.5b", "--stage", "ppo", "--lora-r", "16",
                                 "--batch", "2", "--seq-len", "256"])
    assert result.exit_code == 0, result.output
    assert "policy bwd" in result.output and "to spare in 80 GiB" in result.output
    result = runner.invoke(app, ["plan", "--model", "qwen2-7b", "--devices", "8", "--sharding", "zero3", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["fits"] is True and data["shape"]["params"] == model_shape("qwen2-7b").params
    assert data["peak_bytes"] == max(sum(p.values()) for p in data["phases"].values())


@pytest.mark.parametrize("args", [["--model", "no-such-model"], ["--model", "qwen2-0.5b", "--sharding", "zero9"],
                                  ["--model", "qwen2-0.5b", "--batch", "0"]])
def test_cli_user_errors_exit_2(args):
    result = runner.invoke(app, ["plan", *args])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")


@pytest.mark.slow
def test_planner_within_ten_percent_of_measured_rss():
    """bench/plan_check.py at its smallest size: a real full fine-tuning step in a fresh process, with a
    fixed mmap threshold so that RSS follows live tensors."""
    script = Path(__file__).resolve().parents[1] / "bench" / "plan_check.py"
    out = subprocess.run([sys.executable, str(script), "--sizes", "20M", "--cases", "sft-full", "--malloc", "exact"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "exact malloc: largest deviation" in out.stdout and "within the 10% tolerance" in out.stdout, out.stdout
