"""Typed configs: YAML + key=value overrides, strict about unknown keys and types (one-line errors)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from tiller.config import ConfigError, field, help_lines, load_config, parse_override, to_dict


@dataclass
class Inner:
    depth: int = field(2, help="how deep")
    name: str = field("a", help="a name")


@dataclass
class Cfg:
    lr: float = field(1e-3, help="learning rate")
    steps: int = field(10, help="steps")
    mode: Literal["fast", "slow"] = field("fast", help="speed")
    tags: list[str] = field(default_factory=list, help="tags")
    inner: Inner = field(default_factory=Inner, help="nested section")
    out: Path = field(Path("out"), help="where")
    limit: int | None = field(None, help="optional")

    def validate(self) -> None:
        if self.steps < 0:
            raise ConfigError("steps must be >= 0")


def _yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_then_yaml_then_overrides(tmp_path):
    p = _yaml(tmp_path, "lr: 1\nsteps: 5\ninner:\n  depth: 3\n")
    cfg = load_config(Cfg, p, ["steps=20", "inner.name=b", "tags=[x, y]", "out=o/p", "limit=7"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)  # int -> float is lossless, so accepted
    assert cfg.steps == 20  # the override wins over the file
    assert cfg.inner == Inner(depth=3, name="b")  # the file's depth and the dotted override's name
    assert cfg.tags == ["x", "y"]
    assert cfg.out == Path("o/p")
    assert cfg.limit == 7
    assert load_config(Cfg).inner == Inner()  # defaults alone


def test_to_dict_round_trips_through_load(tmp_path):
    cfg = load_config(Cfg, None, ["mode=slow", "inner.depth=9", "out=a/b"])
    d = to_dict(cfg)
    assert d["out"] == "a/b" and d["inner"] == {"depth": 9, "name": "a"}
    import yaml

    assert load_config(Cfg, _yaml(tmp_path, yaml.safe_dump(d))) == cfg


def test_parse_override_values_are_yaml():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("flag=true") == (["flag"], True)
    assert parse_override("xs=[1,2]") == (["xs"], [1, 2])
    assert parse_override("s=") == (["s"], "")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("novalue")


def test_unknown_key_names_key_and_file(tmp_path):
    p = _yaml(tmp_path, "lr: 0.1\nlrr: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, p)
    msg = str(e.value)
    assert "'lrr'" in msg and str(p) in msg and "\n" not in msg


def test_unknown_nested_key_names_section(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, _yaml(tmp_path, "inner:\n  deep: 1\n"))
    assert "'inner'" in str(e.value) and "'deep'" in str(e.value)


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load_config(Cfg, None, ["nope=1"])


@pytest.mark.parametrize(("override", "expect"), [
    ("steps=abc", "field 'steps': expected an integer, got 'abc'"),
    ("steps=1.5", "field 'steps': expected an integer"),
    ("steps=true", "field 'steps': expected an integer"),  # a bool is not an int here
    ("lr=abc", "field 'lr': expected a number, got 'abc'"),
    ("tags=x", "field 'tags': expected a list"),
    ("inner=3", "field 'inner': expected a mapping for Inner"),
    ("inner.depth=x", "field 'depth': expected an integer"),
])
def test_wrong_types_refused_in_one_line(override, expect):
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, None, [override])
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_literal_checked():
    assert load_config(Cfg, None, ["mode=slow"]).mode == "slow"
    with pytest.raises(ConfigError, match="'medium' is not one of 'fast', 'slow'"):
        load_config(Cfg, None, ["mode=medium"])


def test_validate_runs_and_is_located(tmp_path):
    p = _yaml(tmp_path, "steps: -1\n")
    with pytest.raises(ConfigError, match=f"{p}: steps must be >= 0"):
        load_config(Cfg, p)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"line 2: not valid YAML"):
        load_config(Cfg, _yaml(tmp_path, "lr: 1\n  steps: [\n"))
    with pytest.raises(ConfigError, match="expected a mapping of settings"):
        load_config(Cfg, _yaml(tmp_path, "- 1\n- 2\n"))


def test_scientific_notation_is_a_number(tmp_path):
    assert load_config(Cfg, None, ["lr=1e-4"]).lr == pytest.approx(1e-4)
    assert load_config(Cfg, _yaml(tmp_path, "lr: 3e-5\n")).lr == pytest.approx(3e-5)


def test_help_lines_show_type_default_and_help():
    lines = help_lines(Cfg)
    assert lines[0] == "lr (float, default 0.001): learning rate"
    assert any(line.startswith("inner (Inner, default '{...}')") for line in lines)
