"""The ``tiller`` command: stages listed, user errors as one line on stderr with exit status 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tiller.cli import app

runner = CliRunner()


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_help_lists_the_stages():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("world", "pretrain", "sft", "sample", "label", "rm", "score", "eval"):
        assert cmd in r.stdout


def test_bad_override_type_exits_2_with_one_line(tmp_path):
    r = runner.invoke(app, ["sft", "--run", str(tmp_path / "X"), "lr=abc"])
    assert r.exit_code == 2
    assert "field 'lr': expected a number, got 'abc'" in _one_error_line(r)


def test_unknown_override_key_exits_2(tmp_path):
    r = runner.invoke(app, ["rm", "--run", str(tmp_path / "X"), "epoch=2"])
    assert r.exit_code == 2
    line = _one_error_line(r)
    assert "unknown key 'epoch'" in line and "epochs" in line  # the known keys are listed


def test_missing_config_file_exits_2(tmp_path):
    r = runner.invoke(app, ["pretrain", "--config", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2
    assert "missing.yaml does not exist" in _one_error_line(r)


def test_bad_yaml_key_names_the_file(tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text("epochs: 2\nlearning_rate: 0.1\n")
    r = runner.invoke(app, ["sft", "--run", str(tmp_path / "X"), "--config", str(cfg)])
    assert r.exit_code == 2
    line = _one_error_line(r)
    assert str(cfg) in line and "'learning_rate'" in line


@pytest.mark.parametrize(("cmd", "what"), [
    (["pretrain"], "corpus"),
    (["sft"], "demonstrations"),
    (["label"], "samples"),
])
def test_missing_inputs_say_run_the_earlier_stage(tmp_path, cmd, what):
    r = runner.invoke(app, [*cmd, "--run", str(tmp_path / "empty")])
    assert r.exit_code == 2
    line = _one_error_line(r)
    assert line.startswith(f"error: {what} ") and "run the earlier stage first" in line


def test_stage_config_validation_exits_2(tmp_path):
    r = runner.invoke(app, ["sample", "--run", str(tmp_path / "X"), "k=12"])
    assert r.exit_code == 2
    assert "k must be between 2 and 9, got 12" in _one_error_line(r)
