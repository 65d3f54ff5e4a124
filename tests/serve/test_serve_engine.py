"""ChatEngine on the tiny random model: its decode loop against ``model.generate``, streaming, stops, lock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tiller.chat import END, SPECIAL_TOKENS, ChatFormatError, render_prompt
from tiller.serve.engine import PromptTooLongError

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]


@contextmanager
def force_token(engine: Any, token: str, at_step: int) -> Iterator[None]:
    """Make the model pick ``token`` at decode step ``at_step`` (1-based) by editing the LM head's logits."""
    token_id = engine.tokenizer.convert_tokens_to_ids(token)
    calls = {"n": 0}

    def hook(module: Any, inputs: Any, logits: Any) -> Any:
        calls["n"] += 1  # call 1 is the prompt, which picks the first new token
        if calls["n"] == at_step:
            logits = logits.clone()
            logits[..., -1, token_id] = 1e4
        return logits

    handle = engine.model.get_output_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def test_greedy_loop_matches_generate(engine: Any, reference_greedy: Any) -> None:
    ref = reference_greedy(engine, MESSAGES, 16)
    text, usage = engine.complete(MESSAGES, max_new_tokens=16, temperature=0.0)
    assert text == ref.text and text
    assert usage["completion_tokens"] == ref.completion_tokens
    assert usage["finish_reason"] == ref.finish_reason
    assert usage["prompt_tokens"] == len(engine.tokenizer(render_prompt(MESSAGES))["input_ids"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stream_deltas_concatenate_to_complete(engine: Any) -> None:
    generation = engine.stream(MESSAGES, max_new_tokens=16, temperature=1.0, seed=11)
    deltas = list(generation)
    text, usage = engine.complete(MESSAGES, max_new_tokens=16, temperature=1.0, seed=11)
    assert len(deltas) > 1  # it really streamed
    assert all(deltas)
    assert "".join(deltas) == generation.text == text
    assert generation.usage == usage
    assert not any(marker in text for marker in SPECIAL_TOKENS)


def test_seed_makes_sampling_reproducible(engine: Any) -> None:
    a = engine.complete(MESSAGES, max_new_tokens=16, temperature=1.0, seed=1)[0]
    assert a == engine.complete(MESSAGES, max_new_tokens=16, temperature=1.0, seed=1)[0]
    assert a != engine.complete(MESSAGES, max_new_tokens=16, temperature=1.0, seed=2)[0]


@pytest.mark.parametrize("marker", [END, "<|endoftext|>", "<|user|>"])
def test_stop_token_ends_answer(engine: Any, marker: str) -> None:
    # the answer is the 3 tokens before the forced stop token, which counts as generated
    before, _ = engine.complete(MESSAGES, max_new_tokens=3, temperature=0.0)
    with force_token(engine, marker, at_step=4):
        deltas = list(generation := engine.stream(MESSAGES, max_new_tokens=16, temperature=0.0))
    assert "".join(deltas) == before
    assert generation.usage is not None
    assert generation.usage["completion_tokens"] == 4
    assert generation.usage["finish_reason"] == "stop"


def test_stop_string_cuts_answer(engine: Any) -> None:
    full, usage = engine.complete(MESSAGES, max_new_tokens=16, temperature=0.0)
    assert usage["finish_reason"] == "length" and len(full) > 6
    stop = full[4:6]
    text, usage = engine.complete(MESSAGES, max_new_tokens=16, temperature=0.0, stop=[stop])
    assert text == full[: full.find(stop)].strip()
    assert usage["finish_reason"] == "stop" and usage["completion_tokens"] < 16


def test_bad_messages_fail_before_generation(engine: Any) -> None:
    with pytest.raises(ChatFormatError, match="robot"):
        engine.stream([{"role": "robot", "content": "hi"}])
    with pytest.raises(ChatFormatError):
        engine.stream([])
    with pytest.raises(ChatFormatError, match="end with a user"):
        engine.stream([*MESSAGES, {"role": "assistant", "content": "5"}])
    with pytest.raises(ValueError, match="top_p"):
        engine.stream(MESSAGES, top_p=0.0)


def test_context_window_limits_answer(engine: Any, reference_greedy: Any) -> None:
    with pytest.raises(PromptTooLongError):
        engine.stream([{"role": "user", "content": "cat " * 400}])
    messages = [{"role": "user", "content": "cat " * 200}]
    room = 256 - len(engine.prompt_ids(messages))  # n_positions is 256
    assert 0 < room < 64
    _, usage = engine.complete(messages, max_new_tokens=500, temperature=0.0)
    ref = reference_greedy(engine, messages, room)
    assert (usage["completion_tokens"], usage["finish_reason"]) == (ref.completion_tokens, ref.finish_reason)
    assert usage["total_tokens"] <= 256


def test_lock_serialises_streams(engine: Any) -> None:
    first = engine.stream(MESSAGES, max_new_tokens=16, temperature=1.0, seed=5)
    next(first)  # holds the engine's lock mid-answer
    second = engine.stream(MESSAGES, max_new_tokens=4, temperature=0.0)
    got: list[str] = []
    worker = threading.Thread(target=lambda: got.extend(second))
    worker.start()
    worker.join(timeout=0.5)
    assert worker.is_alive() and got == []  # waiting for the first answer
    first.close()  # a client that left: frees the lock
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert "".join(got) == engine.complete(MESSAGES, max_new_tokens=4, temperature=0.0)[0]
