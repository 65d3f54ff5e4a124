"""Shared fixtures: a tiny embedded world and a tiny base model pretrained on it, built once per session.

Sizes are chosen so the whole chain (world -> tokenizer -> 2-layer GPT-2) builds in seconds on two CPU
cores; the stage tests start from ``tiny_base_dir`` instead of pretraining again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["TILLER_QUIET"] = "1"  # no progress bars in test output

# Without explicit constraints: the stage tests' thresholds (an RM's accuracy, RL's rise in RM score within 8
# iterations) were worked out on this world, and a tiny model on it learns the same rules either way; the
# constraints themselves are tested in tests/world and by `tiller run` (test_pipeline) on the default world's
# settings.
TINY_WORLD = dict(n_train_prompts=140, n_valid_prompts=14, n_test_per_family=6, n_demos=100,
                  corpus_chars=60_000, agreement_items=50, constraint_fraction=0.0)
TINY_PRETRAIN = dict(max_tokens=40_000, batch_size=16, n_layer=2, n_embd=64, n_head=2, block_size=64,
                     vocab_size=400, report_to=[])


@pytest.fixture(scope="session")
def tiny_world_dir(tmp_path_factory) -> Path:
    from tiller.world import WorldConfig, build_world

    out = tmp_path_factory.mktemp("tiny-run") / "world"
    build_world(WorldConfig(**TINY_WORLD), out)
    return out


@pytest.fixture(scope="session")
def tiny_base_dir(tiny_world_dir) -> Path:
    """``RUN/base``: a pretrained tiny model; its metrics are in ``RUN/logs/metrics.jsonl``."""
    from tiller.stages.pretrain import PretrainConfig, pretrain

    run = tiny_world_dir.parent
    pretrain(PretrainConfig(**TINY_PRETRAIN), tiny_world_dir / "corpus-train.jsonl",
             tiny_world_dir / "corpus-valid.jsonl", run / "base", run / "logs")
    return run / "base"


@pytest.fixture
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 at its production cost is ~0.5 s a hash on a shared CI core; tests use the same algorithm at
    minimal cost (``tests/feedback/test_feedback_security.py`` checks the production settings)."""
    pytest.importorskip("argon2")
    from argon2 import PasswordHasher

    from tiller.feedback import security

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def db(tmp_path: Path, cheap_argon2: None) -> Iterator[tuple[str, Any]]:
    """(URL, session factory) of a fresh SQLite database of the labeling app with labelers ana and ben."""
    pytest.importorskip("sqlalchemy")
    from tiller.feedback.db import init_db, make_engine, session_factory
    from tiller.feedback.services.users import create_user

    url = f"sqlite:///{tmp_path / 'app.db'}"
    init_db(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    with sessions() as s:
        for name in ("ana", "ben"):
            create_user(s, name, "labeler", "correct horse")
    yield url, sessions
    engine.dispose()
