"""Run folders: fingerprints, the done/skip check, atomic output folders."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tiller.runs import (
    MANIFEST,
    atomic_dir,
    clean_other_fingerprints,
    clean_stale,
    done_metrics,
    fingerprint,
    fingerprint_path,
    is_done,
    read_manifest,
    run_dir,
    write_manifest,
)


@dataclass
class C:
    lr: float = 0.1
    out: Path = Path("x")


def test_run_dir_names_and_paths():
    assert run_dir("exp1") == Path("runs/exp1")
    assert run_dir("exp1", root="/r") == Path("/r/exp1")
    assert run_dir("some/where") == Path("some/where")
    assert run_dir("/abs") == Path("/abs")


def test_fingerprint_follows_config_and_input_bytes(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("a\n")
    fp = fingerprint("sft", C(), {"data": data})
    assert fingerprint("sft", C(), {"data": data}) == fp  # deterministic
    assert fingerprint("sft", C(lr=0.2), {"data": data}) != fp  # config
    assert fingerprint("rm", C(), {"data": data}) != fp  # stage
    data.write_text("b\n")  # same size, other bytes
    assert fingerprint("sft", C(), {"data": data}) != fp


def test_a_stage_whose_code_changed_does_not_reuse_older_outputs(tmp_path, monkeypatch):
    """Bumping a stage's version changes its fingerprint (a folder made by older code is redone); stages at
    version 1 keep the fingerprint they always had, so their outputs are still reused."""
    import hashlib

    from tiller import runs
    from tiller.config import to_dict

    data = tmp_path / "data.jsonl"
    data.write_text("a\n")
    unversioned = {"stage": "sft", "config": to_dict(C()), "inputs": {"data": runs.fingerprint_path(data)}}
    old = hashlib.sha256(json.dumps(unversioned, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert runs.stage_version("sft") == 1 and fingerprint("sft", C(), {"data": data}) == old
    monkeypatch.setitem(runs.STAGE_VERSIONS, "sft", 2)
    assert fingerprint("sft", C(), {"data": data}) != old
    assert runs.stage_version("ppo-rloo") == runs.stage_version("ppo") == 3


def test_fingerprint_of_a_stage_folder_is_its_manifest_fingerprint(tmp_path):
    write_manifest(tmp_path / "stage", fingerprint="abc123")
    assert fingerprint_path(tmp_path / "stage") == "abc123"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "w.bin").write_bytes(b"12")
    before = fingerprint_path(plain)
    (plain / "w.bin").write_bytes(b"123")
    assert fingerprint_path(plain) != before
    assert fingerprint_path("org/hub-model") == "org/hub-model"


def test_is_done_needs_same_fingerprint_and_done_status(tmp_path):
    out = tmp_path / "out"
    assert not is_done(out, "fp1")
    m = write_manifest(out, stage="sft", fingerprint="fp1", config=C(out=Path("o")))
    assert m["config"] == {"lr": 0.1, "out": "o"}  # stored as plain data
    assert is_done(out, "fp1")
    assert not is_done(out, "fp2")
    write_manifest(out, fingerprint="fp1", status="running")
    assert not is_done(out, "fp1")
    assert read_manifest(out)["status"] == "running"
    assert json.loads((out / MANIFEST).read_text())["tiller_version"]


def test_done_metrics_are_those_of_a_finished_stage_with_the_same_fingerprint(tmp_path):
    out = tmp_path / "out"
    assert done_metrics(out, "fp1") is None
    write_manifest(out, stage="sft", fingerprint="fp1", metrics={"loss": 0.5})
    assert done_metrics(out, "fp1") == {"loss": 0.5}
    assert done_metrics(out, "fp2") is None
    write_manifest(out, fingerprint="fp1", status="running", metrics={"loss": 0.5})
    assert done_metrics(out, "fp1") is None


def test_atomic_dir_leaves_nothing_when_the_body_raises(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_the_old_folder_when_the_body_raises(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "good.bin").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "half.bin").write_text("x")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert [p.name for p in final.iterdir()] == ["good.bin"]


def test_atomic_dir_replaces_the_old_folder_on_success(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "stale.bin").write_text("old")
    with atomic_dir(final) as tmp:
        assert tmp != final and not (tmp / "stale.bin").exists()
        (tmp / "new.bin").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no .tmp-/.old- siblings


def test_clean_stale_removes_only_temporaries(tmp_path):
    (tmp_path / ".model.tmp-123").mkdir()
    (tmp_path / ".f.json.tmp-9").write_text("x")
    (tmp_path / "model").mkdir()
    clean_stale(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_clean_other_fingerprints_keeps_the_current_one(tmp_path):
    for name in (".base.ckpt-aaa", ".base.ckpt-bbb", ".base.tokenizer-aaa", ".base.tokenizer-bbb", "base",
                 ".sft.ckpt-aaa"):
        (tmp_path / name).mkdir()
    clean_other_fingerprints(tmp_path / "base", ("ckpt", "tokenizer"), "bbb")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".base.ckpt-bbb", ".base.tokenizer-bbb",
                                                         ".sft.ckpt-aaa", "base"]


def test_latest_rows_keeps_the_last_of_each_step():
    from tiller.tracking import latest_rows

    rows = [  # a run killed after step 2 (checkpoint at step 1), then resumed from step 1
        {"stage": "ppo", "step": 0, "loss": 3.0, "time": 1}, {"stage": "ppo", "step": 1, "loss": 2.0, "time": 2},
        {"stage": "ppo", "step": 2, "loss": 1.5, "time": 3}, {"stage": "ppo", "step": 1, "eval/kl": 0.1, "time": 4},
        {"stage": "ppo", "step": 2, "loss": 1.4, "time": 5}, {"stage": "ppo", "step": 3, "loss": 1.0, "time": 6},
    ]
    out = latest_rows(rows)
    assert [(r["step"], r.get("loss"), r.get("eval/kl")) for r in out] == [
        (0, 3.0, None), (1, 2.0, None), (1, None, 0.1), (2, 1.4, None), (3, 1.0, None)]
