"""Model loading (chat tokens, a pad distinct from EOS) and the scalar-head model used for rewards."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
)

from helpers import DOCS, plain_tokenizer  # pytest puts tests/ on the path
from tiller.batching import batch
from tiller.chat import END, SPECIAL_TOKENS
from tiller.models import (
    PAD,
    REWARD_FILE,
    VALUE_FILE,
    ScalarModel,
    load_policy,
    load_tokenizer,
    position_ids_from_mask,
)


def _tiny_gpt2(vocab: int, **kw) -> GPT2Config:
    return GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=vocab, **kw)


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    """A GPT-2-style hub folder: byte-level BPE with only <|endoftext|>, pad == eos, no chat tokens."""
    tok = plain_tokenizer()
    d = tmp_path_factory.mktemp("plain")
    tok.save_pretrained(d)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_tiny_gpt2(len(tok), eos_token_id=tok.eos_token_id)).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A tiny random GPT-2 with our own tokenizer (chat tokens and pad already in the vocabulary)."""
    from tiller.stages.pretrain import train_tokenizer

    tok = train_tokenizer(DOCS, 300)
    d = tmp_path_factory.mktemp("chat")
    tok.save_pretrained(d)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_tiny_gpt2(len(tok), pad_token_id=tok.pad_token_id)).save_pretrained(d)
    return d


def _random_head(m: ScalarModel) -> ScalarModel:
    torch.manual_seed(1)
    torch.nn.init.normal_(m.hf.score.weight, std=1.0)
    return m.eval()


def test_position_ids_from_mask_hand_example():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 2, 3, 4]]


def test_load_tokenizer_adds_chat_tokens_and_a_distinct_pad(plain_dir):
    before = AutoTokenizer.from_pretrained(str(plain_dir))
    assert before.pad_token == before.eos_token and END not in before.get_vocab()
    tok = load_tokenizer(plain_dir)
    assert len(tok) == len(before) + len(SPECIAL_TOKENS) + 1  # 4 chat markers + <|pad|>
    assert tok.pad_token == PAD and tok.pad_token_id != tok.eos_token_id
    for t in SPECIAL_TOKENS:
        assert tok(t, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(t)]  # one token
    assert tok.eos_token == "<|endoftext|>"  # the model's own EOS is kept


def test_load_policy_resizes_embeddings(plain_dir):
    model, tok = load_policy(plain_dir)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id
    eos = model.generation_config.eos_token_id
    assert set(eos) == {tok.convert_tokens_to_ids(END), tok.eos_token_id}  # stops at <|end|> or EOS
    ids = tok("<|user|>\nhi<|end|>", add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert model(input_ids=ids.to(model.device)).logits.shape == (1, ids.shape[1], len(tok))  # new ids are embeddable


def test_load_tokenizer_keeps_our_own_tokens(chat_dir):
    before = AutoTokenizer.from_pretrained(str(chat_dir))
    tok = load_tokenizer(chat_dir)
    assert len(tok) == len(before) and tok.pad_token == PAD


def test_fresh_head_starts_at_zero(chat_dir):
    m = ScalarModel.from_pretrained(chat_dir).eval()
    b = batch([[5, 6, 7], [8]], pad_id=1)
    assert m(**b).tolist() == [0.0, 0.0]


def test_score_is_the_same_under_left_and_right_padding(chat_dir):
    tok = load_tokenizer(chat_dir)
    m = _random_head(ScalarModel.from_pretrained(chat_dir, tok))
    long = tok("<|user|>\nthe cat sat on the mat<|end|>", add_special_tokens=False)["input_ids"]
    short = tok("<|user|>\nhi<|end|>", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        alone = [float(m(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))) for s in (long, short)]
        right = m(**batch([long, short], tok.pad_token_id, "right"))
        left = m(**batch([long, short], tok.pad_token_id, "left"))
        assert right.tolist() == pytest.approx(alone, abs=1e-5)
        assert left.tolist() == pytest.approx(alone, abs=1e-5)
        # the check can fail: without position ids, the left-padded short sequence is read at shifted positions
        b = batch([long, short], tok.pad_token_id, "left")
        h = m.hf.base_model(**b).last_hidden_state
        naive = m.hf.score(h)[1, -1, 0]
        assert abs(float(naive) - alone[1]) > 1e-4


def test_scalar_model_save_load_round_trip(chat_dir, tmp_path):
    tok = load_tokenizer(chat_dir)
    m = _random_head(ScalarModel.from_pretrained(chat_dir, tok))
    m.bias, m.gain = 0.75, 2.0
    b = batch([[5, 6, 7], [8, 9]], tok.pad_token_id)
    with torch.no_grad():
        raw = m(**b)
    m.save_pretrained(tmp_path / "rm", extra={"note": "x"})
    tok.save_pretrained(tmp_path / "rm")
    back = ScalarModel.from_pretrained(tmp_path / "rm").eval()
    assert (back.bias, back.gain) == (0.75, 2.0)
    with torch.no_grad():
        assert torch.allclose(back(**b), raw, atol=1e-6)  # the trained head is loaded, not zeroed
        assert torch.allclose(back.normalise(raw), 2.0 * (raw + 0.75))
    # and it is a plain sequence-classification folder that other tools load
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert hf.config.num_labels == 1 and (tmp_path / "rm" / REWARD_FILE).is_file()


def test_pretrained_base_loads_with_plain_transformers(tiny_base_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert tok.pad_token == PAD and tok.pad_token_id != tok.eos_token_id
    assert all(t in tok.get_vocab() for t in SPECIAL_TOKENS)
    ids = tok("<|user|>\nHi<|end|>\n<|assistant|>\n", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] <= ids.shape[1] + 3


def _save_llama(d, tok, dtype: torch.dtype = torch.float32):
    """A tiny random Llama (a bias-free ``score`` head, float attention dropout) saved with ``tok``."""
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=dtype).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def llama_dir(chat_dir, tmp_path_factory):
    return _save_llama(tmp_path_factory.mktemp("llama"), load_tokenizer(chat_dir))


@pytest.fixture(scope="module")
def bf16_dir(chat_dir, tmp_path_factory):
    return _save_llama(tmp_path_factory.mktemp("bf16"), load_tokenizer(chat_dir), torch.bfloat16)


def _dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters()}


def test_trainable_models_load_in_float32_frozen_ones_keep_the_checkpoint_dtype(bf16_dir):
    """Issue #11: AdamW on bf16 weights has no fp32 master copy, so small updates round away."""
    assert _dtypes(load_policy(bf16_dir, device="cpu")[0]) == {torch.float32}  # the default is trainable
    frozen, _ = load_policy(bf16_dir, device="cpu", trainable=False)
    assert _dtypes(frozen) == {torch.bfloat16}
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert _dtypes(load_policy(bf16_dir, device="cpu", dtype=torch.float16)[0]) == {torch.float16}
    assert _dtypes(ScalarModel.from_pretrained(bf16_dir)) == {torch.float32}
    frozen_rm = ScalarModel.from_pretrained(bf16_dir, trainable=False)
    assert _dtypes(frozen_rm) == {torch.bfloat16} and not frozen_rm.training


def _reward_model(path, tok, out) -> ScalarModel:
    """An RM folder at ``out`` with a random head and a normalisation that is not the identity."""
    rm = _random_head(ScalarModel.from_pretrained(path, tok))
    rm.bias, rm.gain = 0.75, 2.5
    rm.save_pretrained(out)
    tok.save_pretrained(out)
    return rm


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_value_model_folds_the_rm_normalisation_into_its_head(arch, llama_dir, chat_dir, tmp_path):
    """V starts on the scale of the rewards PPO sees: token_values at the last token == gain*(raw+bias)."""
    tok = load_tokenizer(chat_dir)
    rm = _reward_model(llama_dir if arch == "llama" else chat_dir, tok, tmp_path / "rm")
    assert rm.hf.score.bias is None  # both architectures' heads lack a bias; the fold must add one
    value = ScalarModel.value_from(tmp_path / "rm", tok).eval()
    assert (value.kind, value.bias, value.gain) == ("value", 0.0, 1.0)
    b = batch([[5, 6, 7, 9], [8, 9]], tok.pad_token_id, "left")
    with torch.no_grad():
        want = rm.normalise(rm(**b))
        got = value.token_values(**b)[:, -1]
        assert torch.allclose(got, want, atol=1e-5)
        assert not torch.allclose(rm(**b), want, atol=1e-2)  # the raw head is on another scale

    value.save_pretrained(tmp_path / "value")
    assert not (tmp_path / "value" / REWARD_FILE).exists()  # a value folder must not pass for an RM
    assert json.loads((tmp_path / "value" / VALUE_FILE).read_text())["kind"] == "value"
    back = ScalarModel.from_pretrained(tmp_path / "value", tok).eval()
    assert (back.kind, back.bias, back.gain) == ("value", 0.0, 1.0)
    with torch.no_grad():
        assert torch.equal(back.token_values(**b), value.token_values(**b))


def test_value_model_from_a_policy_starts_at_zero(chat_dir):
    value = ScalarModel.value_from(chat_dir).eval()
    with torch.no_grad():
        assert value.token_values(**batch([[5, 6, 7], [8]], pad_id=1)).abs().max() == 0.0
