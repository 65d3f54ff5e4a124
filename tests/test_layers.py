"""The import contracts of pyproject.toml hold (``lint-imports``), and they bite: a stage that imports the
world, even inside a function, or a lower layer that imports a higher one, breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root/src`` with ``root/pyproject.toml``'s contracts."""
    if not LINT_IMPORTS.is_file():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(root / "src")}  # ahead of the editable install
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(root / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("module, line, contract", [
    ("stages/sample.py", "import tiller.world\n", "never see the gold judge"),
    ("stages/ppo.py", "def _peek():\n    from tiller.eval.curves import rl_curve\n", "never see the gold judge"),
    ("rollout.py", "def _peek():\n    from tiller.labelers import label\n", "never see the gold judge"),  # via labelers
    ("models.py", "def _peek():\n    from tiller.stages.sft import sft\n", "layers"),
])
def test_a_wrong_way_import_breaks_a_contract(tmp_path, module, line, contract):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "src" / "tiller", tmp_path / "src" / "tiller",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = tmp_path / "src" / "tiller" / module
    target.write_text(target.read_text() + "\n\n" + line)
    out = lint_imports(tmp_path)
    assert out.returncode != 0, out.stdout
    broken = [x for x in out.stdout.splitlines() if x.endswith("BROKEN")]
    assert any(contract in b for b in broken), out.stdout
