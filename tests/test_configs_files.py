"""Every file in ``configs/`` loads and validates as the config of the command it is written for.

Loading goes through ``tiller.config.load_config``, the path ``tiller STAGE --config FILE`` takes: strict
keys and types, then the class's own ``validate()``. A new file in ``configs/`` fails here until it is
given its class in ``CONFIG_CLASSES``.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import click
import pytest
import typer

from tiller.cli import app
from tiller.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# file -> (the command it is for, its config class)
CONFIG_CLASSES = {
    "default.yaml": ("run", "tiller.pipeline:RunConfig"),
    "tiny.yaml": ("run", "tiller.pipeline:RunConfig"),
    "ppo.yaml": ("ppo", "tiller.stages.ppo:PPOConfig"),
    "ppo-sparrow.yaml": ("ppo", "tiller.stages.ppo:PPOConfig"),
    "rm-harmless.yaml": ("rm", "tiller.stages.reward:RMConfig"),
}


def _class(spec: str) -> type:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _validators(cls: type) -> list[str]:
    """The classes whose ``validate()`` loading runs: ``cls`` and its nested sections (``from_dict`` builds those
    through itself, so each section's own checks run too)."""
    out = [cls.__name__] if callable(getattr(cls, "validate", None)) else []
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(sub := f.default_factory()):
            out += _validators(type(sub))
    return out


def test_every_configs_file_has_a_class():
    files = sorted(p.name for p in CONFIGS.iterdir() if p.suffix in (".yaml", ".yml"))
    assert files, CONFIGS
    assert files == sorted(CONFIG_CLASSES), "map each file in configs/ to its config class in CONFIG_CLASSES"


@pytest.mark.parametrize("name", sorted(CONFIG_CLASSES))
def test_configs_file_loads_and_validates(name):
    cmd, spec = CONFIG_CLASSES[name]
    cls = _class(spec)
    assert _validators(cls), f"{spec} has no validate(), nor any section of it: loading would check only types"
    cfg = load_config(cls, CONFIGS / name)  # raises ConfigError on an unknown key, a bad type or validate()
    assert isinstance(cfg, cls)


@pytest.mark.parametrize("name", sorted(CONFIG_CLASSES))
def test_the_file_is_for_the_command_that_takes_its_class(name):
    """The command a file is mapped to takes that class, and the usage line in the file's comment (if any)
    names that command."""
    cmd, spec = CONFIG_CLASSES[name]
    group = typer.main.get_command(app)
    command = group.get_command(click.Context(group), cmd)
    assert command is not None and getattr(command, "config_class", None) == spec
    usage = [line for line in (CONFIGS / name).read_text().splitlines()
             if line.startswith("#") and f"configs/{name}" in line and "tiller " in line]
    assert all(f"tiller {cmd} " in line for line in usage), usage


@pytest.mark.parametrize("name,zero", [("ddp.yaml", 0), ("deepspeed-zero2.yaml", 2), ("deepspeed-zero3.yaml", 3)])
def test_accelerate_configs_load(name, zero):
    """configs/accelerate/: what ``accelerate launch --config_file`` reads. DeepSpeed must clip at tiller's
    max_grad_norm, keep fp32 (bf16 is tiller's autocast), and under ZeRO-3 gather the weights to save them."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / "accelerate" / name))
    assert cfg.mixed_precision == "no" and not cfg.use_cpu
    if not zero:
        assert cfg.distributed_type == "MULTI_GPU"
        return
    ds = cfg.deepspeed_config
    assert cfg.distributed_type == "DEEPSPEED" and ds["zero_stage"] == zero
    assert ds["gradient_clipping"] == 1.0 and ds["gradient_accumulation_steps"] == 1
    assert ds.get("zero3_save_16bit_model", False) == (zero == 3)
