"""The ``tiller`` command: stages listed, user errors as one line on stderr with exit status 2."""

from __future__ import annotations

import dataclasses
import importlib
import re

import click
import pytest
import typer
from typer.testing import CliRunner

from tiller.cli import app

runner = CliRunner()


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# every command of ``tiller``; "app" and "serve" are mounted only when their optional extras import
CORE_COMMANDS = {"world", "pretrain", "sft", "sample", "label", "rm", "score", "ppo", "bon", "dpo", "run", "eval",
                 "report", "import", "validate", "prompts", "plan", "status", "control"}
OPTIONAL_COMMANDS = {"app": "tiller.feedback.cli", "serve": "tiller.serve.cli"}

# the config class whose keys each stage's --help must list (written out here, not read from the CLI)
STAGE_CONFIGS = {
    "world": "tiller.world.config:WorldConfig",
    "pretrain": "tiller.stages.pretrain:PretrainConfig",
    "sft": "tiller.stages.sft:SFTConfig",
    "sample": "tiller.stages.sample:SampleConfig",
    "label": "tiller.labelers:LabelConfig",
    "rm": "tiller.stages.reward:RMConfig",
    "ppo": "tiller.stages.ppo:PPOConfig",
    "bon": "tiller.stages.best_of_n:BoNConfig",
    "dpo": "tiller.stages.dpo:DPOConfig",
    "run": "tiller.pipeline:RunConfig",
}


def _expected_commands() -> set[str]:
    out = set(CORE_COMMANDS)
    for name, module in OPTIONAL_COMMANDS.items():
        try:
            importlib.import_module(module)
        except ImportError:  # the extra is not installed: the CLI rightly leaves the command out
            continue
        out.add(name)
    return out


def _registered_commands() -> list[str]:
    group = typer.main.get_command(app)
    return group.list_commands(click.Context(group))


def test_the_registered_commands_are_exactly_the_expected_ones():
    names = _registered_commands()
    assert len(names) == len(set(names)), names  # no name registered twice
    assert set(names) == _expected_commands()


def test_top_level_help_lists_every_command():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in _expected_commands():
        assert re.search(rf"^\W*{re.escape(cmd)}\s", r.stdout, re.MULTILINE), (cmd, r.stdout)


@pytest.mark.parametrize("cmd", sorted(CORE_COMMANDS | set(OPTIONAL_COMMANDS)))
def test_each_command_help_exits_0_and_lists_its_config_keys(cmd):
    if cmd not in _expected_commands():
        pytest.skip(f"{cmd}: optional extra not installed")
    r = runner.invoke(app, [cmd, "--help"])
    assert r.exit_code == 0, r.output
    assert re.search(rf"Usage: \S+ {re.escape(cmd)}\b", r.stdout), r.stdout  # the command's own help
    if cmd not in STAGE_CONFIGS:
        assert "Config keys" not in r.stdout
        return
    module, _, name = STAGE_CONFIGS[cmd].partition(":")
    cls = getattr(importlib.import_module(module), name)
    keys = [f.name for f in dataclasses.fields(cls)]
    assert keys
    assert "Config keys" in r.stdout
    # one paragraph per key, "name (type, default ...): help", wrapped over as many lines as it needs
    paragraphs = re.split(r"\n\s*\n", r.stdout.split("Config keys", 1)[1].strip())[1:]
    listed = [m.group(1) for p in paragraphs if (m := re.match(r"\s*(\w+) \([^()]*default", p))]
    assert len(listed) == len(paragraphs), paragraphs
    assert listed == keys  # every key, in the class's order, and nothing else


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
