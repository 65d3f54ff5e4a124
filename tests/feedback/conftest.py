"""Fixtures for the labeling app: a fresh database per test (SQLite, and PostgreSQL when
``TILLER_TEST_PG_URL`` is set), users, logged-in clients, sample files and a tiny real chat model."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from tiller.chat import END, ROLE_TOKENS
from tiller.feedback.app import create_app
from tiller.feedback.services.users import create_token, create_user

PG_URL = os.environ.get("TILLER_TEST_PG_URL")
PASSWORD = "correct horse"
LABELERS = ("ana", "ben", "chi")


def reset_postgres(url: str) -> None:
    """Empty the test database (the whole public schema) so each test starts from migrations."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 with its production cost takes ~0.5 s a hash on a shared CI core; tests use the same
    algorithm at minimal cost (``test_passwords_are_argon2id`` checks the production settings)."""
    from argon2 import PasswordHasher

    from tiller.feedback import security

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgres",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(not PG_URL, reason="TILLER_TEST_PG_URL not set (eval \"$(.ci/postgres.sh)\")"),
            ],
        ),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    assert PG_URL
    reset_postgres(PG_URL)
    return PG_URL


@pytest.fixture
def app(db_url: str) -> Iterator[Any]:
    application = create_app(db_url, secret_key="test-secret")
    with application.state.sessions() as s:
        create_user(s, "root", "admin", PASSWORD)
        for name in LABELERS:
            create_user(s, name, "labeler", PASSWORD)
    yield application
    application.state.db_engine.dispose()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, "page has no CSRF token"
    return m.group(1)


def login(app: Any, name: str, password: str = PASSWORD) -> TestClient:
    """A browser-like client logged in as ``name``; ``client.csrf`` is its session's CSRF token."""
    client = TestClient(app)
    page = client.get("/login")
    r = client.post("/login", data={"name": name, "password": password, "csrf_token": csrf_of(page.text)},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    client.csrf = csrf_of(client.get("/").text)  # type: ignore[attr-defined]
    return client


def token_client(app: Any, name: str) -> TestClient:
    """An API client authenticated by a bearer token (no cookies, no CSRF)."""
    from sqlalchemy import select

    from tiller.feedback.models import User

    with app.state.sessions() as s:
        user = s.scalar(select(User).where(User.name == name))
        token = create_token(s, user)
    return TestClient(app, headers={"Authorization": f"Bearer {token}"})


def sample_lines(n: int = 4, k: int = 4) -> list[str]:
    return [
        json.dumps({
            "id": f"p{i}",
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "responses": [f"answer {i}.{j}" for j in range(k)],
            "policy": "sft-1",
        })
        for i in range(n)
    ]


def import_rank_batch(app: Any, name: str = "b1", n: int = 4, k: int = 4, overlap: int = 2) -> None:
    from tiller.feedback.records import parse_lines
    from tiller.feedback.services.batches import import_batch

    with app.state.sessions() as s:
        import_batch(s, name, "rank", overlap, parse_lines("\n".join(sample_lines(n, k)), "rank"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (random) chat model: byte-level BPE with the chat markers, a 1-layer GPT-2."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    specials = [*ROLE_TOKENS.values(), END, "<|pad|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # Printable ASCII only (byte-level names: space is \u0120, newline \u010a), so even a random model
    # writes legible characters in the screenshots instead of broken UTF-8 bytes.
    ascii_alphabet = [chr(b) for b in range(33, 127)] + ["\u0120", "\u010a"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=ascii_alphabet)
    bpe.train_from_iterator(["Hello there, how are you? I am fine.", "The cat sat on the mat. 2 + 3 = 5"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=END, pad_token="<|pad|>",
                                        additional_special_tokens=[*ROLE_TOKENS.values()])
    torch.manual_seed(0)
    # Wide initialisation: the random model then writes varied text instead of stopping at once.
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_head=2, n_embd=32, n_positions=512,
                        initializer_range=0.5, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny_chat_model")
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# The helpers as fixtures (test modules do not import conftest: no tests/__init__.py in this repo).
@pytest.fixture(name="login")
def _login() -> Any:
    return login


@pytest.fixture(name="token_client")
def _token_client() -> Any:
    return token_client


@pytest.fixture(name="import_rank_batch")
def _import_rank_batch() -> Any:
    return import_rank_batch


@pytest.fixture(name="sample_lines")
def _sample_lines() -> Any:
    return sample_lines
