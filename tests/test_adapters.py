"""LoRA adapters (tiller.adapters): what trains, what is saved, and that every loader gets the same model back.

The tiny models start from a tokenizer without tiller's chat markers, so ``load_tokenizer`` adds five tokens
whose embedding rows are random: the case where new token rows must train and travel with the adapter. GPT-2
ties its LM head to the embedding, the Llama here does not.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
)

from helpers import plain_tokenizer  # pytest puts tests/ on the path
from tiller.adapters import (
    ADAPTER_FILE,
    LoraConfig,
    adapter_base,
    adapter_disabled,
    add_adapter,
    apply_lora,
    is_adapter_folder,
    save_model,
    trainable_parameters,
    unwrap,
)
from tiller.batching import batch
from tiller.config import ConfigError
from tiller.models import (
    REWARD_FILE,
    VALUE_FILE,
    ScalarModel,
    SharedValueModel,
    added_token_ids,
    enable_gradient_checkpointing,
    load_policy,
    load_tokenizer,
)

LORA = LoraConfig(r=4, alpha=8.0)


def _save_tiny(d, arch: str):
    """A tiny random model saved with a GPT-2-style tokenizer (only <|endoftext|>, pad == eos)."""
    tok = plain_tokenizer()
    if arch == "gpt2":
        cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=len(tok),
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    else:
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, tie_word_embeddings=False, eos_token_id=tok.eos_token_id,
                          bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def base_dir(request, tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("gpt2-only"), "gpt2")


def _policy(path):
    """The base policy (float32, CPU) and its LoRA model; the base is a copy made before LoRA went in."""
    model, tok = load_policy(path, device="cpu")
    base = copy.deepcopy(model).eval()
    return base, apply_lora(model, LORA, new_token_ids=added_token_ids(path, tok)), tok


def _ids(tok, side: str = "right") -> dict[str, torch.Tensor]:
    """Two chat-formatted rows of different lengths, so the new tokens' rows are read."""
    texts = ["<|user|>\nthe cat sat<|end|>\n<|assistant|>\nhello<|end|>", "<|user|>\nwhat is two<|end|>"]
    return batch([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.pad_token_id, side)


def _perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Random trainable weights, so an adapter that were lost or ignored would show (LoRA's B starts at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable_parameters(model):
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _logits(model, b) -> torch.Tensor:
    with torch.no_grad():
        return model(**b).logits


def test_lora_config_validates_and_zero_rank_is_off():
    assert not LoraConfig().enabled and LoraConfig(r=8).enabled
    for bad in (LoraConfig(r=-1), LoraConfig(r=4, dropout=1.0), LoraConfig(r=4, target_modules=[]),
                LoraConfig(r=4, target_modules=["all-linear", "q_proj"])):
        with pytest.raises(ConfigError):
            bad.validate()
    with pytest.raises(ValueError, match="r == 0"):
        apply_lora(torch.nn.Linear(2, 2), LoraConfig())  # type: ignore[arg-type]


def test_only_adapters_and_new_token_rows_train(base_dir):
    base, model, tok = _policy(base_dir)
    new = added_token_ids(base_dir, tok)
    own = len(AutoTokenizer.from_pretrained(base_dir))
    assert new == list(range(own, own + 5))  # 4 chat markers and <|pad|> after the checkpoint's own tokens
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n or "trainable_tokens_delta" in n for n in names)
    assert not any("lm_head" in n and "lora" in n for n, _ in model.named_parameters())  # no LoRA on the head
    tied = unwrap(model).config.tie_word_embeddings
    rows = [n for n in names if "trainable_tokens_delta" in n]
    assert len(rows) == (1 if tied else 2)  # an untied LM head trains its own rows for the new tokens
    n_lora = sum(p.numel() for p in trainable_parameters(model))
    assert n_lora < 0.25 * sum(p.numel() for p in base.parameters())


def test_training_changes_only_the_adapter_and_lowers_the_loss(base_dir):
    base, model, tok = _policy(base_dir)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    b = _ids(tok)
    labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**b, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n  # base weights bit for bit
        elif ".lora_A." not in n:  # A gets no gradient on the first step (B = 0), B and token rows always
            assert not torch.equal(p, trained[n]), n


def test_disabled_adapter_gives_the_base_model_exactly(base_dir):
    base, model, tok = _policy(base_dir)
    _perturb(model)
    model.eval()
    b = _ids(tok)
    with adapter_disabled(model):
        assert torch.equal(_logits(model, b), _logits(base, b))
    assert not torch.allclose(_logits(model, b), _logits(base, b), atol=1e-3)  # the adapter is back on
    with pytest.raises(TypeError):
        with adapter_disabled(base):
            pass


def test_adapter_folder_is_small_and_loads_as_the_same_model(base_dir, tmp_path):
    _, model, tok = _policy(base_dir)
    _perturb(model)
    model.eval()
    b = _ids(tok)
    save_model(model, tmp_path / "sft")
    tok.save_pretrained(tmp_path / "sft")
    assert is_adapter_folder(tmp_path / "sft") and not (tmp_path / "sft" / "model.safetensors").exists()
    meta = json.loads((tmp_path / "sft" / ADAPTER_FILE).read_text())
    assert meta["base_model"] == str(base_dir) and meta["merged"] is False
    size = (tmp_path / "sft" / "adapter_model.safetensors").stat().st_size
    assert size < 0.5 * (base_dir / "model.safetensors").stat().st_size  # no whole embedding in it

    torch.manual_seed(123)  # resizing draws the new rows at random: only the adapter's rows give them back
    loaded, tok2 = load_policy(tmp_path / "sft", device="cpu")
    assert type(loaded) is type(unwrap(model))  # a plain model: samplers and servers need no peft
    assert all(p.requires_grad for p in loaded.parameters())  # trainable in full (peft had frozen the base)
    assert len(tok2) == len(tok)
    assert torch.allclose(_logits(loaded, b), _logits(model, b), atol=1e-5)

    # a second stage (PPO) trains an adapter on that model: its base is the first adapter folder
    assert added_token_ids(tmp_path / "sft", tok2) == []  # the rows were trained in SFT
    ppo = apply_lora(loaded, LORA)
    _perturb(ppo, seed=2)
    ppo.eval()
    save_model(ppo, tmp_path / "policy")
    tok2.save_pretrained(tmp_path / "policy")
    assert json.loads((tmp_path / "policy" / ADAPTER_FILE).read_text())["base_model"] == str(tmp_path / "sft")
    again, _ = load_policy(tmp_path / "policy", device="cpu", trainable=False)
    assert torch.allclose(_logits(again, b), _logits(ppo, b), atol=1e-5)


def test_merged_folder_loads_with_plain_transformers(base_dir, tmp_path):
    base, model, tok = _policy(base_dir)
    _perturb(model)
    model.eval()
    b = _ids(tok)
    want = _logits(model, b)
    save_model(model, tmp_path / "merged", merge=True)
    assert not is_adapter_folder(tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.allclose(_logits(plain, b), want, atol=1e-5)
    assert torch.equal(_logits(model, b), want)  # the live adapter model is untouched by the merge:
    with adapter_disabled(model):  # its base weights too (a merge in place would have changed them)
        assert torch.equal(_logits(model, b), _logits(base, b))
    assert json.loads((tmp_path / "merged" / ADAPTER_FILE).read_text())["merged"] is True


def _lora_rm(path, tok) -> ScalarModel:
    rm = ScalarModel.from_pretrained(path, tok)
    rm.hf = apply_lora(rm.hf, LORA, head="score", new_token_ids=added_token_ids(path, tok))
    _perturb(rm)  # the head starts at zero: make it and the adapter non-trivial
    rm.bias, rm.gain = 0.75, 2.5
    return rm.eval()


def test_reward_model_with_lora_round_trip(base_dir, tmp_path):
    tok = load_tokenizer(base_dir)
    rm = _lora_rm(base_dir, tok)
    names = [n for n, p in rm.named_parameters() if p.requires_grad]
    assert any("score.modules_to_save" in n for n in names)  # the head trains in full
    assert not any("score" in n and "lora" in n for n in names)  # and gets no LoRA
    b = _ids(tok)
    with torch.no_grad():
        raw = rm(**b)
    assert raw.abs().min() > 0
    rm.save_pretrained(tmp_path / "rm", extra={"max_len": 64})
    tok.save_pretrained(tmp_path / "rm")
    assert is_adapter_folder(tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / REWARD_FILE).read_text()) == {"bias": 0.75, "gain": 2.5, "max_len": 64}
    torch.manual_seed(7)
    back = ScalarModel.from_pretrained(tmp_path / "rm", trainable=False)
    assert (back.bias, back.gain, back.kind) == (0.75, 2.5, "reward")
    with torch.no_grad():
        assert torch.allclose(back(**b), raw, atol=1e-5)

    rm.save_pretrained(tmp_path / "rm-merged", merge=True)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm-merged")
    assert plain.config.num_labels == 1 and (tmp_path / "rm-merged" / REWARD_FILE).is_file()
    with torch.no_grad():
        assert torch.allclose(ScalarModel(plain).eval()(**b), raw, atol=1e-5)


def test_value_model_from_an_adapter_rm_and_with_its_own_lora(gpt2_dir, tmp_path):
    tok = load_tokenizer(gpt2_dir)
    rm = _lora_rm(gpt2_dir, tok)
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    b = _ids(tok, "left")  # the last position is every row's last token
    value = ScalarModel.value_from(tmp_path / "rm", tok).eval()
    assert all(p.requires_grad for p in value.parameters())
    with torch.no_grad():
        want = rm.normalise(rm(**b))
        assert torch.allclose(value.token_values(**b)[:, -1], want, atol=1e-5)

    value.hf = apply_lora(value.hf, LORA, head="score")  # a value model trained with LoRA, saved as one
    _perturb(value, seed=3)
    value.eval()
    value.save_pretrained(tmp_path / "value")
    assert (tmp_path / "value" / VALUE_FILE).is_file() and not (tmp_path / "value" / REWARD_FILE).exists()
    assert json.loads((tmp_path / "value" / ADAPTER_FILE).read_text())["base_model"] == str(tmp_path / "rm")
    back = ScalarModel.from_pretrained(tmp_path / "value", tok).eval()
    assert back.kind == "value"
    with torch.no_grad():
        assert torch.allclose(back.token_values(**b), value.token_values(**b), atol=1e-5)


def test_scalar_model_from_a_policy_adapter_reads_the_adapted_transformer(base_dir, tmp_path):
    """An RM (or a value model) initialised from an SFT adapter: the policy's LoRA and token rows, a zero head."""
    _, model, tok = _policy(base_dir)
    _perturb(model)
    model.eval()
    save_model(model, tmp_path / "sft")
    tok.save_pretrained(tmp_path / "sft")
    rm = ScalarModel.from_pretrained(tmp_path / "sft").eval()
    b = _ids(tok)
    with torch.no_grad():
        want = unwrap(model).base_model(**b).last_hidden_state
        got = rm.hf.base_model(**b).last_hidden_state
        assert torch.allclose(got, want, atol=1e-5)
        assert rm(**b).abs().max() == 0.0


def test_gradient_checkpointing_with_lora_gives_the_same_gradients(gpt2_dir):
    """The PPO-from-SFT case, no new token rows: nothing before the first block is trainable, and the
    adapters inside the checkpointed blocks must still get their gradients, the same ones."""
    policy, tok = load_policy(gpt2_dir, device="cpu")
    model = apply_lora(policy, LORA)
    _perturb(model)
    checkpointed = copy.deepcopy(model)
    enable_gradient_checkpointing(checkpointed)
    assert unwrap(checkpointed).base_model.gradient_checkpointing
    b = _ids(tok)
    grads = []
    for m in (model, checkpointed):
        m.train()
        for d in m.modules():  # GPT-2's dropout would draw other masks in the two models
            if isinstance(d, torch.nn.Dropout):
                d.p = 0.0
        m(**b, labels=b["input_ids"]).loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n, g in grads[0].items():
        assert g is not None and grads[1][n] is not None and g.abs().max() > 0, n  # reaches every adapter
        assert torch.allclose(grads[1][n], g, atol=1e-6), n


def test_new_token_rows_train_and_are_saved(base_dir, tmp_path):
    """A frozen embedding would keep <|end|>'s random resize row, and an untied head would never predict it."""
    base, model, tok = _policy(base_dir)
    new = added_token_ids(base_dir, tok)
    old, old_head = base.get_input_embeddings().weight, base.get_output_embeddings().weight
    b = _ids(tok)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    for _ in range(2):
        model(**b, labels=b["input_ids"]).loss.backward()
        opt.step()
        opt.zero_grad()
    save_model(model, tmp_path / "a")
    tok.save_pretrained(tmp_path / "a")
    loaded, _ = load_policy(tmp_path / "a", device="cpu")
    emb, head = loaded.get_input_embeddings().weight, loaded.get_output_embeddings().weight
    used = sorted(set(b["input_ids"].flatten().tolist()) & set(new))
    assert used  # the batch reads new tokens: <|user|>, <|end|>, ...
    with torch.no_grad():  # the rows the adapter model uses (peft's wrappers put the trained rows in)
        trained = unwrap(model).get_input_embeddings()(torch.tensor(used))
        trained_head = unwrap(model).get_output_embeddings()(torch.eye(emb.shape[1])).T[used]
    assert not torch.allclose(trained, old[used])  # they trained
    assert torch.allclose(emb[used], trained)  # and came back from the folder
    assert torch.allclose(head[used], trained_head)
    old_ids = [i for i in range(len(tok)) if i not in new]
    assert torch.allclose(emb[old_ids], old[old_ids])  # and only theirs
    if loaded.config.tie_word_embeddings:
        assert head.data_ptr() == emb.data_ptr()  # still one matrix after the merge
    else:
        assert not torch.allclose(head[used], old_head[used])  # the head's own rows trained too
        assert torch.allclose(head[old_ids], old_head[old_ids])


def _adapter_grads(model, name: str) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in model.named_parameters() if f".{name}." in n}


def test_peft_set_adapter_silently_drops_the_inactive_adapters_gradients(gpt2_dir):
    """The trap a shared-backbone value model must avoid (measured on peft 0.21): a policy forward, a switch
    to the value adapter, one backward of the summed losses, and the policy adapter gets no gradient."""
    policy = apply_lora(load_policy(gpt2_dir, device="cpu")[0], LORA)
    add_adapter(policy, "value", LORA)
    _perturb(policy)
    b = _ids(load_tokenizer(gpt2_dir))
    loss = policy(**b).logits.pow(2).mean()
    policy.set_adapter("value")
    loss = loss + unwrap(policy).base_model(**b).last_hidden_state.pow(2).mean()
    loss.backward()
    assert all(g is None for g in _adapter_grads(policy, "default").values())


def test_shared_value_model_trains_both_adapters_in_one_backward(gpt2_dir):
    base, policy, tok = _policy(gpt2_dir)  # the policy trains the new token rows, as in SFT
    value = SharedValueModel(policy, LORA, new_token_ids=added_token_ids(gpt2_dir, tok))  # its own copy of them
    _perturb(policy)
    _perturb(value.head, seed=4)
    b = _ids(tok)
    assert [n for n, _ in value.named_parameters()] == ["head.weight", "head.bias"]  # the backbone is the policy's
    assert len(value.trainable_parameters()) == len(trainable_parameters(policy)) // 2 + 2  # its adapter + head

    def policy_loss():
        return policy(**b).logits.pow(2).mean()

    policy_loss().backward()  # the policy's gradients alone, for comparison
    alone = {n: g.clone() for n, g in _adapter_grads(policy, "default").items()}
    policy.zero_grad()
    (policy_loss() + value(**b, per_token=True).pow(2).mean()).backward()  # PPO: one backward of the sum
    for n, g in _adapter_grads(policy, "default").items():
        assert g is not None and g.abs().max() > 0, n
        assert torch.allclose(g, alone[n], atol=1e-6), n  # the value forward neither adds nor removes any
    value_grads = _adapter_grads(policy, "value")
    assert value_grads and all(g is not None and g.abs().max() > 0 for g in value_grads.values())
    assert value.head.weight.grad is not None and policy.active_adapter == "default"

    policy.eval()
    with adapter_disabled(policy):  # the reference is still the base, with both adapters present
        assert torch.equal(_logits(policy, b), _logits(base, b))
    with torch.no_grad():  # the value reads the backbone under its own adapter, not the policy's
        hidden = unwrap(policy).base_model(**b).last_hidden_state
        assert not torch.allclose(value(**b, per_token=True), value.head(hidden).squeeze(-1), atol=1e-4)


def test_shared_value_model_refuses_gradient_checkpointing(gpt2_dir):
    """The backward would recompute the value's blocks under the policy adapter: wrong gradients, no error."""
    _, policy, tok = _policy(gpt2_dir)
    value = SharedValueModel(policy, LORA)
    enable_gradient_checkpointing(policy)
    policy.train()
    with pytest.raises(RuntimeError, match="checkpointing"):
        value(**_ids(tok))
    with torch.no_grad():  # values for the rollout need no backward
        assert value(**_ids(tok)).shape == (2,)


def test_saving_a_policy_with_a_shared_value_saves_the_policy_adapter_alone(gpt2_dir, tmp_path):
    _, policy, tok = _policy(gpt2_dir)
    SharedValueModel(policy, LORA, new_token_ids=added_token_ids(gpt2_dir, tok))
    _perturb(policy)
    policy.eval()
    b = _ids(tok)
    save_model(policy, tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    assert not (tmp_path / "policy" / "value").exists()  # peft would put the value adapter there
    loaded, _ = load_policy(tmp_path / "policy", device="cpu")
    assert torch.allclose(_logits(loaded, b), _logits(policy, b), atol=1e-5)
    save_model(policy, tmp_path / "merged", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.allclose(_logits(merged, b), _logits(policy, b), atol=1e-5)


def test_an_adapter_finds_its_local_base_after_the_run_folder_moves(gpt2_dir, tmp_path):
    shutil.copytree(gpt2_dir, tmp_path / "run" / "base")
    _, model, tok = _policy(tmp_path / "run" / "base")
    _perturb(model)
    model.eval()
    save_model(model, tmp_path / "run" / "sft")
    tok.save_pretrained(tmp_path / "run" / "sft")
    (tmp_path / "run").rename(tmp_path / "moved")
    assert adapter_base(tmp_path / "moved" / "sft") == str((tmp_path / "moved" / "base").resolve())
    loaded, _ = load_policy(tmp_path / "moved" / "sft", device="cpu")
    b = _ids(tok)
    assert torch.allclose(_logits(loaded, b), _logits(model, b), atol=1e-5)
