from pathlib import Path

import pytest

from tiller.world import WorldConfig, build_world

TINY = dict(n_people=8, n_places=4, n_venues=4, n_fake_people=6, n_train_users=4, n_valid_users=2,
            n_test_users=3, n_train_prompts=70, n_valid_prompts=14, n_test_per_family=5, n_demos=40,
            corpus_chars=20_000, agreement_items=20)


def tiny_config(**kw) -> WorldConfig:
    return WorldConfig(**{**TINY, **kw})


@pytest.fixture(scope="session")
def make_tiny():
    """``make_tiny(**overrides) -> WorldConfig`` for a world that builds in well under a second."""
    return tiny_config


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    build_world(tiny_config(), out)
    return out


@pytest.fixture(scope="session")
def tiny_world(tiny_dir):
    from tiller.world import load_world

    return load_world(tiny_dir)
