"""LoRA (peft) through the stages: SFT and the RM train adapters and save them alone (naming their base),
every reader loads them as plain models, and PPO's reference is the policy with its adapter disabled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiller.adapters import ADAPTER_FILE
from tiller.data import write_jsonl
from tiller.models import ScalarModel, load_policy

LORA = {"r": 8, "alpha": 16.0}


@pytest.fixture(scope="module")
def lora_sft(tiny_base_dir, tiny_world_dir, tmp_path_factory) -> tuple[Path, dict]:
    from tiller.config import from_dict
    from tiller.stages.sft import SFTConfig, sft

    out = tmp_path_factory.mktemp("lora-sft") / "sft"
    cfg = from_dict(SFTConfig, {"epochs": 2, "batch_size": 16, "lr": 3e-3, "report_to": [], "lora": LORA})
    return out, sft(cfg, str(tiny_base_dir), tiny_world_dir / "demos.jsonl", out, out.parent / "logs")


def test_lora_sft_saves_the_adapter_alone_and_loads_as_a_plain_trained_model(lora_sft, tiny_base_dir):
    out, metrics = lora_sft
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert json.loads((out / ADAPTER_FILE).read_text())["merged"] is False
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    base_size = (tiny_base_dir / "model.safetensors").stat().st_size
    assert size < base_size  # megabytes, not the model
    model, _ = load_policy(out, trainable=False)
    base, _ = load_policy(tiny_base_dir, trainable=False)
    moved = [n for (n, p), (_, q) in zip(model.named_parameters(), base.named_parameters(), strict=True)
             if not torch.equal(p, q)]
    assert moved and all("ln" not in n for n in moved)  # the adapted matrices changed, the norms did not
    assert metrics["loss/eval"] < 5.0


def test_lora_rm_learns_and_its_adapter_folder_scores_as_the_trained_model(tiny_base_dir, tmp_path):
    from test_ppo import length_rankings  # pytest puts tests/ on the path
    from tiller.config import from_dict
    from tiller.scoring import RewardScorer
    from tiller.stages.reward import RMConfig, train_rm

    write_jsonl(tmp_path / "rankings.jsonl", length_rankings(240, 4, seed=0))
    cfg = from_dict(RMConfig, {"epochs": 2, "lr": 3e-3, "batch_size": 16, "max_len": 96, "valid_fraction": 0.2,
                               "report_to": [], "lora": LORA})
    metrics = train_rm(cfg, str(tiny_base_dir), [tmp_path / "rankings.jsonl"], None, tmp_path / "rm", tmp_path / "logs")
    assert metrics["eval/accuracy"] > 0.75, metrics
    assert (tmp_path / "rm" / ADAPTER_FILE).is_file()
    rm = ScalarModel.from_pretrained(tmp_path / "rm", trainable=False)
    assert rm.kind == "reward" and rm.bias == pytest.approx(metrics["rm/bias"])
    short, long = RewardScorer(str(tmp_path / "rm")).score(["Tell me something."] * 2,
                                                           ["the river", " ".join(["the river town"] * 4)], [True, True])
    assert float(short) > float(long)  # the planted rule: shorter is better


def test_lora_ppo_reference_is_the_policy_with_its_adapter_disabled(lora_sft, tiny_world_dir, tmp_path):
    from tiller.config import from_dict
    from tiller.stages.ppo import PPOConfig, train_ppo

    sft_dir = lora_sft[0]
    rm_dir = tmp_path / "rm"
    rm = ScalarModel.from_pretrained(sft_dir)  # a zero head: every answer scores 0
    rm.save_pretrained(rm_dir)
    cfg = from_dict(PPOConfig, {"iterations": 3, "rollout_batch": 8, "minibatch_size": 8, "ppo_epochs": 2,
                                "eval_every": 0, "eval_prompts": 6, "max_new_tokens": 12, "report_to": [],
                                "lr": 3e-3, "lora": LORA})
    out = tmp_path / "policy"
    train_ppo(cfg, str(sft_dir), str(sft_dir), tiny_world_dir / "prompts.jsonl", out, tmp_path / "logs",
              rm_path=str(rm_dir))
    curve = json.loads((out / "curve.json").read_text())
    assert curve[0]["iteration"] == 0 and abs(curve[0]["kl"]) < 1e-5  # the reference is exactly the start
    assert curve[-1]["kl"] != curve[0]["kl"]  # and the policy moved away from it
    assert (out / ADAPTER_FILE).is_file() and (out / "value" / ADAPTER_FILE).is_file()
    # the PPO adapter's base is the SFT adapter folder, itself on the base model: loads back whole
    policy, _ = load_policy(out, trainable=False)
    sft, _ = load_policy(sft_dir, trainable=False)
    assert any(not torch.equal(p, q) for p, q in zip(policy.parameters(), sft.parameters(), strict=True))


def test_adapter_disabled_reference_gives_the_base_logits(tiny_base_dir):
    from tiller.adapters import LoraConfig, apply_lora
    from tiller.stages.ppo import AdapterDisabled

    base, tok = load_policy(tiny_base_dir, trainable=False)
    policy, _ = load_policy(tiny_base_dir)
    policy = apply_lora(policy, LoraConfig(r=4))
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.1)  # an adapter that changes the outputs
    ids = torch.tensor([tok("the river town")["input_ids"]])
    ref = AdapterDisabled(policy)
    assert torch.equal(ref(input_ids=ids).logits, base(input_ids=ids).logits)
    assert not torch.allclose(policy(input_ids=ids).logits, base(input_ids=ids).logits)


def test_shared_backbone_value_trains_the_policy_and_value_adapters(lora_sft, tiny_world_dir, tmp_path):
    from tiller.config import from_dict
    from tiller.stages.ppo import PPOConfig, train_ppo

    sft_dir = lora_sft[0]
    rm = ScalarModel.from_pretrained(sft_dir)
    rm.save_pretrained(tmp_path / "rm")
    cfg = from_dict(PPOConfig, {"iterations": 2, "rollout_batch": 8, "minibatch_size": 8, "ppo_epochs": 2,
                                "eval_every": 0, "eval_prompts": 4, "max_new_tokens": 12, "report_to": [],
                                "lr": 3e-3, "lora": LORA, "value_backbone": "shared"})
    m = train_ppo(cfg, str(sft_dir), str(sft_dir), tiny_world_dir / "prompts.jsonl", tmp_path / "policy",
                  tmp_path / "logs", rm_path=str(tmp_path / "rm"))
    assert m["loss/value"] > 0 and m["eval/kl"] != 0.0


def test_the_policy_optimiser_does_not_hold_a_shared_backbone_value_adapter(tiny_base_dir):
    """Both optimisers holding the value adapter stepped it twice per minibatch, once at the policy's lr."""
    from tiller.adapters import LoraConfig, apply_lora
    from tiller.models import SharedValueModel
    from tiller.stages.ppo import policy_optimizer, value_optimizer

    policy, _ = load_policy(tiny_base_dir)
    policy = apply_lora(policy, LoraConfig(r=4))
    value = SharedValueModel(policy, LoraConfig(r=4))
    held = {id(p) for g in policy_optimizer(policy, value, 1e-3).param_groups for p in g["params"]}
    value_held = {id(p) for g in value_optimizer(value, 1e-3).param_groups for p in g["params"]}
    assert held and value_held and not held & value_held
    assert held | value_held == {id(p) for p in policy.parameters() if p.requires_grad} | {
        id(p) for p in value.head.parameters()}
