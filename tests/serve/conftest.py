"""Fixtures for the server tests: a tiny random tiller model, an engine over it and a live uvicorn server.

The model is a one-layer GPT-2 with a 300-token byte-level BPE that has the chat markers as special
tokens: random, but its greedy tokens are checked against ``model.generate`` as the reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tiller.batching import encode_prompt
from tiller.chat import END, ROLE_TOKENS

MODEL_NAME = "tiny-chat"
SPECIAL = [*ROLE_TOKENS.values(), END, "<|pad|>", "<|endoftext|>"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [
        "What is 2 + 3? It is 5.",
        "Tell me a story about a cat.",
        "The cat sat on the mat. Héllo wörld ✓",
    ]
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>")
    tokenizer.add_special_tokens({"additional_special_tokens": [*ROLE_TOKENS.values(), END]})

    torch.manual_seed(0)
    # A wide initialisation so the greedy answer is varied text rather than one repeated token.
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=1,
        n_head=2,
        n_embd=32,
        n_positions=256,
        initializer_range=0.5,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny_chat_model")
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> Any:
    from tiller.serve.engine import ChatEngine

    return ChatEngine(str(tiny_model_dir), device="cpu", model_name=MODEL_NAME)


@dataclass
class Reference:
    text: str
    completion_tokens: int
    finish_reason: str


def _reference_greedy(engine: Any, messages: list[dict[str, str]], max_new_tokens: int) -> Reference:
    """The answer ``model.generate`` gives greedily, stopped at the same stop ids, cleaned as the chat
    format says: the yardstick for the engine's own decode loop."""
    from tiller.chat import clean_response

    tok = engine.tokenizer
    prompt = torch.tensor([encode_prompt(tok, messages)])
    with torch.inference_mode():
        out = engine.model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(engine.stop_ids),
            pad_token_id=tok.pad_token_id,
        )
    new = out[0, prompt.shape[1] :].tolist()
    stopped = bool(new) and new[-1] in engine.stop_ids
    text = tok.decode(
        new[:-1] if stopped else new, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    return Reference(clean_response(text), len(new), "stop" if stopped else "length")


@pytest.fixture()
def reference_greedy() -> Any:
    return _reference_greedy


@pytest.fixture()
def model_name() -> str:
    return MODEL_NAME


@pytest.fixture(scope="session")
def server_url(engine: Any) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a background thread, for the whole session."""
    from helpers import live_server  # tests/ is on the path (pytest's rootdir conftest)
    from tiller.serve.api import create_app

    with live_server(create_app(engine)) as url:
        yield url


@pytest.fixture()
def client(server_url: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=30)
