"""The HTTP API through the official ``openai`` client against a live uvicorn server."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tiller.chat import SPECIAL_TOKENS, render_prompt

MESSAGES = [{"role": "user", "content": "Tell me a story about a cat."}]


def n_prompt_tokens(engine: Any, messages: list[dict[str, str]]) -> int:
    return len(engine.tokenizer(render_prompt(messages))["input_ids"])


def test_completion(client: Any, engine: Any, model_name: str, reference_greedy: Any) -> None:
    ref = reference_greedy(engine, MESSAGES, 12)
    resp = client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=12, temperature=0)
    choice = resp.choices[0]
    assert resp.object == "chat.completion" and resp.model == model_name
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert choice.message.content == ref.text
    assert choice.finish_reason == ref.finish_reason
    assert resp.usage.prompt_tokens == n_prompt_tokens(engine, MESSAGES)
    assert resp.usage.completion_tokens == ref.completion_tokens
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 123, "top_p": 0.9}])
def test_stream_matches_completion(client: Any, model_name: str, sampling: dict[str, Any]) -> None:
    kw = {"model": model_name, "messages": MESSAGES, "max_tokens": 16, **sampling}
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for d in deltas if d) > 1  # it really streamed
    assert "".join(deltas) == whole.choices[0].message.content
    assert not any(marker in d for d in deltas for marker in SPECIAL_TOKENS)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_multi_turn_prompt_uses_chat_format(client: Any, engine: Any, model_name: str) -> None:
    messages = [
        {"role": "system", "content": "You are brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "It is 5."},
        {"role": "user", "content": "And 2 + 4?"},
    ]
    resp = client.chat.completions.create(model=model_name, messages=messages, max_tokens=4, temperature=0)
    expected = n_prompt_tokens(engine, messages)
    assert resp.usage.prompt_tokens == expected
    # every turn counts: the last user message alone is a shorter prompt
    assert expected > n_prompt_tokens(engine, messages[-1:])


def test_text_content_parts_are_joined(client: Any, engine: Any, model_name: str) -> None:
    parts = [{"type": "text", "text": "Tell me a story "}, {"type": "text", "text": "about a cat."}]
    resp = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": parts}], max_tokens=4, temperature=0
    )
    assert resp.usage.prompt_tokens == n_prompt_tokens(engine, MESSAGES)


def test_n_choices_use_successive_seeds(client: Any, engine: Any, model_name: str) -> None:
    resp = client.chat.completions.create(
        model=model_name, messages=MESSAGES, max_tokens=8, temperature=1.0, seed=40, n=2
    )
    expected = [engine.complete(MESSAGES, max_new_tokens=8, temperature=1.0, seed=s) for s in (40, 41)]
    assert [c.message.content for c in resp.choices] == [text for text, _ in expected]
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.usage.completion_tokens == sum(u["completion_tokens"] for _, u in expected)


def test_stop_sequence(client: Any, model_name: str) -> None:
    kw = {"model": model_name, "messages": MESSAGES, "max_tokens": 16, "temperature": 0}
    full = client.chat.completions.create(**kw).choices[0].message.content
    stop = full[5:7]
    choice = client.chat.completions.create(stop=[stop], **kw).choices[0]
    assert choice.message.content == full[: full.find(stop)].strip()
    assert choice.finish_reason == "stop"


def test_models_list_and_health(client: Any, server_url: str, model_name: str) -> None:
    assert [m.id for m in client.models.list()] == [model_name]
    assert client.models.retrieve(model_name).id == model_name
    assert httpx.get(f"{server_url}/health").json() == {"status": "ok", "model": model_name}


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([{"role": "robot", "content": "hi"}], "robot"),
        ([], "non-empty"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "end with a user"),
    ],
)
def test_bad_messages_are_400(client: Any, model_name: str, messages: list[Any], fragment: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_name, messages=messages, max_tokens=4)
    error = err.value.response.json()["error"]
    assert err.value.status_code == 400
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == "messages"


def test_bad_stream_request_is_400_before_streaming(client: Any, model_name: str) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=model_name, messages=[{"role": "tool", "content": "x"}], stream=True
        )


def test_out_of_range_parameter_is_400(client: Any, model_name: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=0)
    assert err.value.response.json()["error"]["param"] == "max_tokens"


def test_unknown_model_is_404(client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES, max_tokens=4)
    error = err.value.response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")
