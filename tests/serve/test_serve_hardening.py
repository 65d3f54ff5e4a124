"""`tiller serve` against hostile or careless clients (issue #15, item 4), through the official ``openai``
client and raw HTTP against a live uvicorn server: API keys, bounded request bodies, out-of-range seeds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from helpers import live_server  # pytest puts tests/ on the path
from tiller.serve.api import create_app

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def keyed_url(engine: Any) -> Iterator[str]:
    with live_server(create_app(engine, api_keys=["sekret", "other"], max_body=64 * 1024)) as url:
        yield url


def keyed_client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


def test_with_api_keys_a_wrong_key_is_401_in_openais_shape_and_a_right_one_works(keyed_url, model_name):
    with pytest.raises(openai.AuthenticationError) as err:
        keyed_client(keyed_url, "guess").chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=4)
    assert err.value.response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        keyed_client(keyed_url, "guess").models.list()
    assert httpx.get(f"{keyed_url}/v1/models").status_code == 401  # no header at all
    for key in ("sekret", "other"):
        out = keyed_client(keyed_url, key).chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=4)
        assert out.choices[0].message.content is not None
    assert httpx.get(f"{keyed_url}/health").status_code == 200  # probes need no key


def test_a_body_over_the_limit_is_413_before_it_is_parsed(keyed_url, model_name):
    big = {"model": model_name, "messages": [{"role": "user", "content": "x" * 200_000}]}
    r = httpx.post(f"{keyed_url}/v1/chat/completions", json=big, headers={"Authorization": "Bearer sekret"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"model": "x", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"y" * 4096
        yield b'"}]}'

    r = httpx.post(f"{keyed_url}/v1/chat/completions", content=chunks(), headers={"Authorization": "Bearer sekret"})
    assert r.status_code == 413
    small = keyed_client(keyed_url, "sekret").chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=4)
    assert small.choices  # the server is still serving


@pytest.mark.parametrize("seed", [2**64, 2**63, -1])
def test_an_out_of_range_seed_is_400_not_500(client, model_name, seed):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=4, seed=seed)
    assert err.value.response.json()["error"]["param"] == "seed"


def test_the_largest_seed_works(client, model_name):
    out = client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=4, seed=2**63 - 1, n=2)
    assert len(out.choices) == 2


@pytest.mark.parametrize("flags, trusted", [([], None), (["--forwarded-allow-ips", "10.0.0.5"], "10.0.0.5")])
def test_serve_trusts_proxy_headers_only_when_told(tiny_model_dir, monkeypatch, flags, trusted):
    """uvicorn's default believes X-Forwarded-For from 127.0.0.1; `tiller serve` believes it from no one
    unless its proxies are listed (as `tiller app serve`, issue #15 item 9)."""
    import uvicorn
    from typer.testing import CliRunner

    from tiller.cli import app as cli

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))  # everything before the listen is real
    monkeypatch.delenv("TILLER_SERVE_FORWARDED_ALLOW_IPS", raising=False)
    r = CliRunner().invoke(cli, ["serve", "--model", str(tiny_model_dir), *flags])
    assert r.exit_code == 0, r.output
    assert seen["proxy_headers"] is bool(trusted) and seen["forwarded_allow_ips"] == trusted
