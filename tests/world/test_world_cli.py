import json

import pytest
import typer

from tiller.world.cli import world_cmd

TINY = ["n_people=6", "n_places=3", "n_venues=3", "n_fake_people=4", "n_train_users=3", "n_valid_users=1",
        "n_test_users=2", "n_train_prompts=21", "n_valid_prompts=7", "n_test_per_family=2", "n_demos=10",
        "corpus_chars=3000", "agreement_items=10"]


def test_world_cmd_builds_reuses_and_refuses(tmp_path, capsys):
    out = tmp_path / "w"
    world = world_cmd(out, None, TINY, False)
    text = capsys.readouterr().out
    assert "labeler agreement" in text and "arithmetic" in text and "corpus" in text
    assert len(world.prompts) == 21 + 7 + 14
    stamp = (out / "corpus-train.jsonl").stat().st_mtime_ns
    world_cmd(out, None, TINY, False)  # same config: reused, not rebuilt
    assert "up to date" in capsys.readouterr().out
    assert (out / "corpus-train.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(typer.Exit) as e:  # another config over an existing world needs --force
        world_cmd(out, None, [*TINY, "seed=5"], False)
    assert e.value.exit_code == 2
    world_cmd(out, None, [*TINY, "seed=5"], True)
    assert json.loads((out / "manifest.json").read_text())["config"]["seed"] == 5


def test_bad_config_exits_2(tmp_path, capsys):
    cfg = tmp_path / "w.yaml"
    cfg.write_text("n_peeple: 3\n")
    with pytest.raises(typer.Exit) as e:
        world_cmd(tmp_path / "w", cfg, [], False)
    assert e.value.exit_code == 2
    err = capsys.readouterr().err
    assert "n_peeple" in err and str(cfg) in err and err.count("\n") == 1
