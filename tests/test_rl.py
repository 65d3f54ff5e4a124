"""RL tensors and helpers: EMA weights, running moments, value alignment, dropout switched off."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from tiller.models import ScalarModel
from tiller.rl import EMA, RunningMoments, build_sequences, disable_dropout, has_dropout, value_forward

VOCAB = 50


class Scalar(nn.Module):
    """One float parameter and two buffers, one float and one integer."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.register_buffer("scale", torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def set(self, x: float) -> Scalar:
        with torch.no_grad():
            self.w.fill_(x)
            self.scale.fill_(10 * x)
            self.steps.fill_(int(x))
        return self


def test_ema_hand_example():
    """Decay 0.5, weights 1, 2, 3 after three steps: shadow = 0.125*1 + 0.25*2 + 0.5*3 = 2.125 and
    1 - 0.5**3 = 0.875, so the average is 2.125 / 0.875 = 17/7 (weights 1/7, 2/7, 4/7, summing to 1).
    The initial weight (100) takes no part in it."""
    model = Scalar().set(100.0)
    ema = EMA(model, decay=0.5)
    for x in (1.0, 2.0, 3.0):
        ema.update(model.set(x))
    ema.copy_to(model)
    assert float(model.w.detach()) == pytest.approx(17 / 7)
    assert float(model.scale.detach()) == pytest.approx(170 / 7)  # float buffers are averaged too
    assert int(model.steps) == 3  # integer buffers are left alone
    assert ema.n == 3 and float(ema.average()["w"]) == pytest.approx(17 / 7)


def test_ema_after_one_update_is_the_current_weights():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.992)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.zero_()
    ema.copy_to(model)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, want[k], atol=1e-6), k


def test_ema_without_updates_leaves_the_model_alone():
    model = Scalar().set(4.0)
    EMA(model, decay=0.9).copy_to(model)
    assert float(model.w.detach()) == 4.0


def test_ema_state_round_trip(tmp_path):
    model = Scalar()
    ema = EMA(model, decay=0.9)
    for x in (1.0, 5.0):
        ema.update(model.set(x))
    torch.save(ema.state_dict(), tmp_path / "ema.pt")  # what accelerate's register_for_checkpointing does
    back = EMA(Scalar(), decay=0.9)
    back.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    assert back.n == 2
    for e in (ema, back):
        e.update(model.set(7.0))
    assert float(back.average()["w"]) == pytest.approx(float(ema.average()["w"]))
    # by hand: shadow = 0.081*1 + 0.09*5 + 0.1*7 = 1.231 over 1 - 0.9**3 = 0.271
    assert float(back.average()["w"]) == pytest.approx(1.231 / 0.271)


def test_running_moments_match_numpy_over_the_concatenated_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=n) for n in (1, 7, 30, 2)] + [np.empty(0)]
    rm = RunningMoments()
    for i, xs in enumerate(batches):
        rm.update(torch.tensor(xs, dtype=torch.float32))
        seen = np.concatenate(batches[: i + 1])
        assert rm.count == len(seen)
        assert rm.mean == pytest.approx(seen.mean(), rel=1e-5)
        assert rm.var == pytest.approx(seen.var(), rel=1e-4, abs=1e-6)  # population variance
    back = RunningMoments()
    back.load_state_dict(rm.state_dict())
    assert (back.count, back.mean, back.std) == (rm.count, rm.mean, rm.std)


def _tiny_llama(**kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=64, **kw)


def test_value_forward_reads_the_position_that_generates_each_response_token():
    """V(s_t) of response token t comes from the position before it, so under left padding of the prompt
    row i equals ``token_values`` of the unpadded sequence at positions len(prompt)-1 ... len-2."""
    torch.manual_seed(0)
    value = ScalarModel(AutoModelForSequenceClassification.from_config(_tiny_llama(num_labels=1))).eval()
    nn.init.normal_(value.hf.score.weight)
    prompts, responses = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]], [[13, 14], [15, 16, 17, 18], [19]]
    b = build_sequences(prompts, responses, pad_id=0)
    with torch.no_grad():
        got = value_forward(value, b)  # (B, R)
        assert got.shape == (3, 4)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            ids = torch.tensor([p + r])
            alone = value.token_values(ids, torch.ones_like(ids))[0, len(p) - 1 : -1]
            assert torch.allclose(got[i, : len(r)], alone, atol=1e-5), i


def _train_forwards_differ(model: nn.Module) -> bool:
    model.train()
    ids = torch.arange(1, 17)[None] % VOCAB
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(input_ids=ids).logits
        torch.manual_seed(2)
        b = model(input_ids=ids).logits
    return not torch.equal(a, b)


@pytest.mark.parametrize("make", [
    # Llama's attention dropout is a float the attention kernel reads, not an nn.Dropout (issue #11)
    lambda: LlamaForCausalLM(_tiny_llama(attention_dropout=0.5, attn_implementation="eager")),
    lambda: LlamaForCausalLM(_tiny_llama(attention_dropout=0.5, attn_implementation="sdpa")),
    lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, n_positions=64,
                                       resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)),
], ids=["llama-eager", "llama-sdpa", "gpt2"])
def test_disable_dropout_makes_train_mode_forwards_deterministic(make):
    torch.manual_seed(0)
    model = make()
    assert has_dropout(model) and _train_forwards_differ(model)
    disable_dropout(model)
    assert not has_dropout(model)
    assert not _train_forwards_differ(model)
    assert all(v == 0.0 for k, v in vars(model.config).items() if isinstance(v, float) and "drop" in k)


def test_disable_dropout_leaves_non_float_attributes_alone():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.2))
    model.use_dropout = True  # a flag, not a rate
    model.dropout_layers = 3
    assert has_dropout(model)
    disable_dropout(model)
    assert not has_dropout(model) and model[1].p == 0.0
    assert model.use_dropout is True and model.dropout_layers == 3
