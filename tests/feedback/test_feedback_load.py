"""A bounded version of bench/label_load.py: 10 labelers x 5 s against a real uvicorn on 127.0.0.1,
with double clicks and retries of the same idempotency key. Every accepted label is stored exactly once."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "label_load.py"


def load_bench():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("label_load", BENCH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["label_load"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.slow  # 10 labelers for 5 s against a real server: ~25 s on a loaded 2-core machine
@pytest.mark.skipif(not BENCH.exists(), reason="bench/label_load.py not in this checkout")
def test_concurrent_labelers_lose_and_duplicate_nothing(db_url: str, tmp_path: Path) -> None:
    bench = load_bench()
    f = bench.run_load(db_url, labelers=10, seconds=5, items=300, overlap=3, retry_every=3, workdir=tmp_path)
    print(f)
    assert f["accepted"] > 20 and f["replays"] > 5  # it did run, and retries did happen
    assert f["lost"] == 0 and f["duplicates"] == 0
    assert f["stored"] == f["accepted"] and f["unacknowledged"] == 0
    assert f["errors"] == 0
