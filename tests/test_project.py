"""A project run's sources (tiller.project): checked up front with one clear error each, curated and
snapshotted once into the run folder, from files and from the app's playground."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tiller.config import ConfigError, load_config
from tiller.data import DataError
from tiller.pipeline import RunConfig
from tiller.project import prepare, validate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "own-project"


def project(tmp_path: Path, base: Path, *overrides: str) -> RunConfig:
    """The example project's config on ``base``, its ranking database in ``tmp_path``."""
    return load_config(RunConfig, EXAMPLE / "project.yaml",
                       [f"base_model={base}", f"label.db=sqlite:///{tmp_path / 'app.db'}", *overrides])


def lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the example's paths are relative to the repository's root


def test_the_example_project_validates(tiny_base_dir, tmp_path):
    validate(project(tmp_path, tiny_base_dir))


@pytest.mark.parametrize("overrides, message", [
    (["base_model="], "needs base_model"),
    (["data.prompts=[]"], "needs data.prompts"),
    (["data.demos=[]"], "needs data.demos"),
    (["data.prompts=[no/such/prompts.jsonl]"], "data.prompts: no/such/prompts.jsonl does not exist"),
    (["data.test_prompts=nope.jsonl"], "data.test_prompts: nope.jsonl does not exist"),
    (["label.labeler=world"], "label.labeler: world ranks with the embedded world"),
    (["eval.judges=[world]"], "eval.judges: world is the embedded world's gold judge"),
    (["ppo.ptx_coef=1.0"], "give data.ptx_corpus"),
    (["arms=[ppo-noptx]"], "arms: ppo-noptx"),
])
def test_a_bad_project_fails_before_any_work_with_one_line(tiny_base_dir, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(project(tmp_path, tiny_base_dir, *overrides))


def test_a_model_folder_that_does_not_load_is_named(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(ConfigError, match=f"base_model '{empty}' does not load"):
        validate(project(tmp_path, empty))


def test_a_bad_record_is_named_by_file_line_and_field(tiny_base_dir, tmp_path):
    bad = lines(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Hi?", "user_id": "u"}, {"id": "b", "prompt": "Hi?"}])
    with pytest.raises(DataError) as e:
        validate(project(tmp_path, tiny_base_dir, f"data.prompts=[{bad}]"))
    assert str(e.value) == f"{bad}:2: field 'user_id': missing"


def test_world_runs_refuse_project_keys():
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="data.prompts is read only with data.source: project"):
        validate(replace(cfg, data=replace(cfg.data, prompts=["x.jsonl"])))


def test_prepare_curates_splits_by_user_and_snapshots_once(tiny_base_dir, tmp_path):
    cfg = project(tmp_path, tiny_base_dir)
    rd = tmp_path / "run"
    src = prepare(cfg, rd)
    records = [json.loads(x) for x in src.prompts.read_text().splitlines()]
    assert len(records) == 60 and {r["split"] for r in records} <= {"train", "valid"}
    for user in {r["user_id"] for r in records}:  # split by user: no user's prompts on both sides
        assert len({r["split"] for r in records if r["user_id"] == user}) == 1
    assert len(src.test_prompts or []) == 12 and src.demos.read_text().count("\n") == 36
    assert src.report["output"] == 60
    # a rerun reuses the snapshot even when a source grows meanwhile (the loop's data never changes halfway) ...
    stamp = src.prompts.stat().st_mtime_ns
    assert prepare(cfg, rd).prompts.stat().st_mtime_ns == stamp
    # ... unless the config changes
    src2 = prepare(replace(cfg, data=replace(cfg.data, curation=replace(cfg.data.curation, max_per_user=2))), rd)
    assert len(src2.prompts.read_text().splitlines()) == 24


def test_no_test_users_and_no_test_file_is_a_clear_error(tiny_base_dir, tmp_path):
    cfg = project(tmp_path, tiny_base_dir, "data.test_prompts=")
    with pytest.raises(ConfigError, match="no held-out prompts for the judges"):
        prepare(cfg, tmp_path / "run")


def test_playground_prompts_with_consent_are_a_source(tiny_base_dir, tmp_path, cheap_argon2):
    pytest.importorskip("sqlalchemy")
    from tiller.feedback.db import init_db, make_engine, session_factory
    from tiller.feedback.services.playground import add_exchange, create_conversation
    from tiller.feedback.services.users import create_user

    cfg = project(tmp_path, tiny_base_dir, "data.prompts=[app]")
    init_db(cfg.label.db)
    engine = make_engine(cfg.label.db)
    with session_factory(engine)() as s:
        for name, consent in (("ana", True), ("ben", False)):
            user = create_user(s, name, "labeler", "correct horse")
            for i in range(3):  # each a new chat in the playground, answered
                conv = create_conversation(s, user, "m", {"m": "path"})
                add_exchange(s, user, conv.id, [{"role": "user", "content": f"{name} question {i}?"}], consent,
                             f"answer {i}")
    engine.dispose()
    src = prepare(cfg, tmp_path / "run")
    records = [json.loads(x) for x in src.prompts.read_text().splitlines()]
    assert [r["prompt"][0]["content"] for r in records] == [f"ana question {i}?" for i in range(3)]  # ben said no
    assert {r["user_id"] for r in records} == {"user-1"}  # pseudonymous, as every export of playground data
