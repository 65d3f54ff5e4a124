"""Run folders: every stage writes into ``runs/NAME/...`` with a manifest, atomically.

A stage's output folder holds ``tiller-manifest.json`` (stage, resolved config, seed, tiller version,
input fingerprints, metrics, times). A rerun whose config and inputs fingerprint the same is skipped;
``--force`` redoes it. Outputs are built in a temporary sibling folder and renamed into place, so a
killed stage never leaves a half-written model that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tiller import __version__
from tiller.config import to_dict

MANIFEST = "tiller-manifest.json"
LOOP_STATE = "loop.json"  # a resumable checkpoint's loop state (step, curve, ...), beside the saved tensors


def run_dir(name_or_path: str | Path, root: str | Path = "runs") -> Path:
    """``NAME`` -> ``runs/NAME``; a path containing a slash is taken as is."""
    p = Path(name_or_path)
    return p if (p.is_absolute() or len(p.parts) > 1) else Path(root) / p


def fingerprint_path(path: str | Path) -> str:
    """A cheap content fingerprint: a stage folder's manifest hash, or a file's size+hash of its bytes."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        m = json.loads((p / MANIFEST).read_text())
        return m.get("fingerprint", "")
    if p.is_file():
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()[:16]
    if p.is_dir():  # a plain folder (e.g. a hub-style model): names and sizes
        items = sorted((str(q.relative_to(p)), q.stat().st_size) for q in p.rglob("*") if q.is_file())
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
    return str(path)  # a hub name: the name is all we know


# A stage's version is bumped when its output changes for the same config and inputs (a fix in its code), so
# a run folder made by older code redoes that stage instead of reusing it. Version 1 is left out of the
# fingerprint, so stages that never changed keep theirs. Version 2 (issue #11): samples stop at role headers,
# RM items weigh by their rankings, PPO and best-of-n score the sampled tokens. Version 3 (issue #12): PPO and
# best-of-n sample each answer from its own seeded stream, the same under any number of processes.
STAGE_VERSIONS = {"sample": 2, "rm": 2, "ppo": 3, "bon": 3}


def stage_version(stage: str) -> int:
    """``ppo-rloo`` and the other algorithms share ``ppo``'s version."""
    return STAGE_VERSIONS.get(stage.split("-")[0], 1)


def fingerprint(stage: str, config: Any, inputs: Mapping[str, str | Path]) -> str:
    payload: dict[str, Any] = {
        "stage": stage,
        "config": to_dict(config),
        "inputs": {k: fingerprint_path(v) for k, v in sorted(inputs.items())},
    }
    if stage_version(stage) > 1:
        payload["version"] = stage_version(stage)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    f = Path(path) / MANIFEST
    return json.loads(f.read_text()) if f.is_file() else None


def _done_manifest(out: str | Path, fp: str) -> dict[str, Any] | None:
    m = read_manifest(out)
    return m if m is not None and m.get("fingerprint") == fp and m.get("status") == "done" else None


def is_done(out: str | Path, fp: str) -> bool:
    return _done_manifest(out, fp) is not None


def done_metrics(out: str | Path, fp: str) -> dict[str, Any] | None:
    """The metrics of a stage folder that finished with fingerprint ``fp``; None when it must be (re)done."""
    m = _done_manifest(out, fp)
    return None if m is None else m["metrics"]


def write_manifest(out: str | Path, **fields: Any) -> dict[str, Any]:
    m = {"tiller_version": __version__, "status": "done", "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
    if "config" in m:
        m["config"] = to_dict(m["config"])
    atomic_write_text(Path(out) / MANIFEST, json.dumps(m, indent=2, default=str))
    return m


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it replaces ``final`` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _remove(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def clean_stale(parent: str | Path) -> None:
    """Remove temporary folders left by killed stages (their names start with a dot)."""
    for p in Path(parent).glob(".*.tmp-*"):
        _remove(p)


def clean_other_fingerprints(out: str | Path, kinds: tuple[str, ...], fp: str) -> None:
    """Remove ``.{out}.{kind}-{other fingerprint}`` siblings: resumable state of a killed run whose config
    or inputs have since changed can never be resumed, only take disk space."""
    out = Path(out)
    for kind in kinds:
        for p in out.parent.glob(f".{out.name}.{kind}-*"):
            if p.name != f".{out.name}.{kind}-{fp}":
                _remove(p)
