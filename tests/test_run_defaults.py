"""`tiller run` with no --config is the tuned run of configs/default.yaml: RunConfig's defaults and the file
may not drift apart, field by field."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tiller.cli import app
from tiller.config import load_config, to_dict
from tiller.pipeline import RunConfig

DEFAULT_YAML = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def leaves(d: dict, prefix: str = "") -> dict[str, object]:
    """``{"ppo.kl_coef": 0.05, ...}``: every setting of a nested config dict under its dotted key."""
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_runconfig_defaults_are_configs_default_yaml():
    defaults, tuned = leaves(to_dict(RunConfig())), leaves(to_dict(load_config(RunConfig, DEFAULT_YAML)))
    assert defaults.keys() == tuned.keys()
    differ = {k: (defaults[k], tuned[k]) for k in defaults if defaults[k] != tuned[k]}
    assert not differ, f"RunConfig() default -> configs/default.yaml: {differ}"


def test_tiller_run_without_config_resolves_to_the_default_yaml(monkeypatch, tmp_path):
    import tiller.pipeline

    seen = []

    def fake_run(cfg, rd, force=False):  # stop before any stage: only the resolved config matters
        seen.append(cfg)
        (tmp_path / "results.json").write_text(json.dumps({}))
        return tmp_path / "report.html"

    monkeypatch.setattr(tiller.pipeline, "run_pipeline", fake_run)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", "--run", "x"])
    assert result.exit_code == 0, result.output
    assert to_dict(seen[0]) == to_dict(load_config(RunConfig, DEFAULT_YAML))
    assert seen[0].pretrain.arch == "llama" and seen[0].rounds == 3  # what the README promises


def test_run_seed_offsets_every_stage_seed_but_not_the_world_or_evaluation():
    from tiller.pipeline import seeded

    base = RunConfig()
    assert seeded(base) is base  # seed 0: the stages' configs, and so their fingerprints, are unchanged
    s2 = seeded(RunConfig(seed=2))
    for stage in ("pretrain", "sft", "sample", "label", "rm", "ppo", "bon", "dpo"):
        assert getattr(s2, stage).seed == getattr(base, stage).seed + 2000, stage
    assert s2.world == base.world and s2.eval == base.eval
