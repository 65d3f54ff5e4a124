"""Where a run's data comes from: the embedded world, or a user's own project.

A project run (``data.source: project``) brings its own base model, prompts and demonstrations, from files
or from the labeling app (the chat playground's consented prompts, demonstration batches written there).
Both kinds of run hand the stages the same files (a ``prompts.jsonl`` with train/valid/test splits and a
``demos.jsonl``), so nothing after this module knows which it is.

A project's sources are copied into the run folder once (``runs/NAME/data/project/``): prompts curated as
InstructGPT curated them (:func:`tiller.data.prompts.curate`: consent, long-prefix duplicates, 200 per user,
split by user id, PII scrubbed), demonstrations as read. A rerun reuses that snapshot while the config and
the source files are unchanged, so prompts that reach the playground while a loop runs never change its data
halfway (a new run, or ``--force``, takes them in).

:func:`validate` checks a project's config before any work starts: a missing file, a record that does not
parse, an empty prompt set or a model folder that does not load each stop the run with one clear line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, Literal

from tiller.config import ConfigError, field, to_dict
from tiller.data import read_records, write_jsonl
from tiller.data.prompts import CurationConfig, curate
from tiller.runs import fingerprint, is_done, read_manifest, write_manifest

APP = "app"  # a prompt source: the playground's consented prompts
APP_BATCH = "app:"  # a demonstration source prefix: app:BATCH, a demonstration batch in the app


@dataclass
class DataConfig:
    source: Literal["world", "project"] = field(
        "world", help="world: the embedded world makes the prompts, demonstrations, labelers and the gold judge; "
                      "project: your own base_model, data.prompts and data.demos")
    prompts: list[str] = field(
        default_factory=list,
        help="project: prompt files (PromptRecord JSONL: id, prompt, user_id) and/or 'app', the consented prompts "
             "of the app's chat playground (label.db); curated and split by user id (data.curation)")
    demos: list[str] = field(
        default_factory=list,
        help="project: demonstration files (JSONL: prompt, response) and/or 'app:BATCH', a demonstration batch in "
             "the app (the run waits until it is written)")
    test_prompts: str = field(
        "", help="project: held-out prompts the judges compare answers on (default: the curated prompts' test split)")
    ptx_corpus: str = field(
        "", help="project: pretraining text for PPO-ptx (JSONL of {\"text\": ...}); without one set ppo.ptx_coef=0")
    curation: CurationConfig = field(default_factory=CurationConfig, help="project: how prompts are curated")


@dataclass
class Sources:
    """The files the stages read, whichever kind of run made them."""

    prompts: Path  # PromptRecords with splits
    demos: Path
    ptx_corpus: Path | None
    world_dir: Path | None = None  # the embedded world's folder, None for a project
    test_prompts: list[Any] | None = None  # a project's held-out chat prompts (the world has its own test set)
    report: dict[str, Any] = dc_field(default_factory=dict)  # curation's report (project)


def is_app_batch(source: str) -> bool:
    return source.startswith(APP_BATCH)


def source_files(data: DataConfig) -> dict[str, str]:
    """The project's source files by role (name -> path), for checks and the snapshot's fingerprint."""
    files = {f"prompts{i}": p for i, p in enumerate(data.prompts) if p != APP}
    files |= {f"demos{i}": d for i, d in enumerate(data.demos) if not is_app_batch(d)}
    if data.test_prompts:
        files["test_prompts"] = data.test_prompts
    if data.ptx_corpus:
        files["ptx_corpus"] = data.ptx_corpus
    return files


def _check_model(name: str) -> None:
    """Load the model's config and tokenizer (not its weights): enough to know the folder or hub name is a model."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(name)
        AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"base_model {name!r} does not load as a Hugging Face model: {first}") from None


def _check_app(db: str, what: str) -> None:
    try:
        from tiller.feedback.db import init_db
    except ImportError:
        raise ConfigError(f"{what} needs the labeling app: pip install 'tiller[app]'") from None
    try:
        init_db(db)
    except Exception as e:  # noqa: BLE001 - any driver error: the URL is what the user can fix
        raise ConfigError(f"{what}: the app's database {db!r} cannot be opened: {e}") from None


def validate(cfg: Any) -> None:
    """Check a run's sources before any work starts (``cfg`` is a :class:`tiller.pipeline.RunConfig`)."""
    data: DataConfig = cfg.data
    judges = list(cfg.eval.judges)
    if data.source == "world":
        extra = [k for k in ("prompts", "demos", "test_prompts", "ptx_corpus") if getattr(data, k)]
        if extra:
            raise ConfigError(f"data.{extra[0]} is read only with data.source: project (the embedded world makes "
                              "its own data)")
        if cfg.label.labeler == "app" or "app" in judges:
            _check_app(cfg.label.db, "label.labeler: app" if cfg.label.labeler == "app" else "eval.judges: app")
        return
    if not cfg.base_model:
        raise ConfigError("data.source: project needs base_model: a Hugging Face model folder or hub name")
    if not data.prompts:
        raise ConfigError("data.source: project needs data.prompts: prompt files and/or 'app'")
    if not data.demos:
        raise ConfigError("data.source: project needs data.demos: demonstration files and/or 'app:BATCH'")
    if cfg.label.labeler == "world":
        raise ConfigError("label.labeler: world ranks with the embedded world's labelers; a project ranks with "
                          "app (people), judge (an AI judge, label.judge) or rm (label.rm)")
    if "world" in judges:
        raise ConfigError("eval.judges: world is the embedded world's gold judge; a project is judged by app "
                          "(people) and/or openai:URL[:MODEL] (an AI judge), or [] for none")
    if cfg.ppo.ptx_coef and not data.ptx_corpus:
        raise ConfigError("ppo.ptx_coef > 0 mixes pretraining text into RL (PPO-ptx): give data.ptx_corpus, or set "
                          "ppo.ptx_coef=0")
    if not cfg.ppo.ptx_coef and "ppo-noptx" in cfg.arms:
        raise ConfigError("arms: ppo-noptx is PPO without the pretraining term, the same as the main policy when "
                          "ppo.ptx_coef is 0: leave it out of arms")
    for bad in [s for s in data.prompts if s != APP and not Path(s).exists()]:
        raise ConfigError(f"data.prompts: {bad} does not exist")
    for bad in [s for s in data.demos if not is_app_batch(s) and not Path(s).exists()]:
        raise ConfigError(f"data.demos: {bad} does not exist")
    for key in ("test_prompts", "ptx_corpus"):
        if getattr(data, key) and not Path(getattr(data, key)).exists():
            raise ConfigError(f"data.{key}: {getattr(data, key)} does not exist")
    # every record parses now, not an hour in (DataError names file, line and field)
    prompts = [r for s in data.prompts if s != APP for r in read_records(s, "prompt")]
    for s in data.demos:
        if not is_app_batch(s) and not read_records(s, "demonstration"):
            raise ConfigError(f"data.demos: {s} has no demonstrations")
    if data.test_prompts and not read_records(data.test_prompts, "prompt"):
        raise ConfigError(f"data.test_prompts: {data.test_prompts} has no prompts")
    if APP in data.prompts or any(is_app_batch(s) for s in data.demos) or cfg.label.labeler == "app" or "app" in judges:
        _check_app(cfg.label.db, "an app source")
    elif not prompts:
        raise ConfigError(f"data.prompts: {', '.join(data.prompts)} hold no prompts")
    _check_model(cfg.base_model)


def _read_app_prompts(db: str) -> list[dict[str, Any]]:
    from tiller.feedback.db import make_engine, session_factory
    from tiller.feedback.services.export import prompt_records

    engine = make_engine(db)
    try:
        with session_factory(engine)() as session:
            return list(prompt_records(session, consented_only=True))
    finally:
        engine.dispose()


def _read_prompts(data: DataConfig, db: str) -> list[Any]:
    from tiller.data.formats import PromptRecord

    records: list[Any] = []
    for s in data.prompts:
        if s == APP:
            records += [PromptRecord.from_json(r) for r in _read_app_prompts(db)]
        else:
            records += list(read_records(s, "prompt"))
    return records


def _read_demos(data: DataConfig, cfg: Any, out: Path, on_wait: Callable[[str], None] | None) -> list[Any]:
    records: list[Any] = []
    for s in data.demos:
        if is_app_batch(s):
            from tiller.feedback.services.export import wait_and_export

            batch = s.removeprefix(APP_BATCH)
            if on_wait:
                on_wait(batch)
            path = out / f"demos-{batch}.jsonl"
            wait_and_export(cfg.label.db, batch, path, poll_s=cfg.label.poll_s, timeout_s=cfg.label.timeout_s or None)
            records += list(read_records(path, "demonstration"))
        else:
            records += list(read_records(s, "demonstration"))
    return records


def prepare(cfg: Any, rd: Path, on_wait: Callable[[str], None] | None = None, force: bool = False) -> Sources:
    """Snapshot a project's sources into ``rd/data/project`` (once; see the module's docstring).
    ``on_wait(batch)`` is called before waiting for an app demonstration batch."""
    data: DataConfig = cfg.data
    out = rd / "data" / "project"
    prompts_path, demos_path, test_path = out / "prompts.jsonl", out / "demos.jsonl", out / "test-prompts.jsonl"
    sources = {**source_files(data), "base_model": cfg.base_model}
    fp = fingerprint("project-data", {"data": to_dict(data), "db": cfg.label.db}, sources)
    manifest = out / "snapshot"
    if force or not is_done(manifest, fp):
        records, report = curate(_read_prompts(data, cfg.label.db), data.curation)
        if not any(r.split == "train" for r in records):
            raise ConfigError(f"data.prompts: no prompts left for training after curation ({json.dumps(report)})")
        test = (list(read_records(data.test_prompts, "prompt")) if data.test_prompts
                else [r for r in records if r.split == "test"])
        if not test and cfg.eval.judges:
            raise ConfigError(f"no held-out prompts for the judges: the split by user put none of the "
                              f"{len({r.user_id for r in records})} users in test; give data.test_prompts or more "
                              f"users (data.curation.test_frac)")
        demos = _read_demos(data, cfg, out, on_wait)
        if not demos:
            raise ConfigError("data.demos: no demonstrations")
        write_jsonl(prompts_path, records)
        write_jsonl(demos_path, demos)
        write_jsonl(test_path, test)
        write_manifest(manifest, stage="project-data", fingerprint=fp, config=to_dict(data),
                       metrics={"prompts": len(records), "demos": len(demos), "test_prompts": len(test),
                                "curation": report})
    meta = read_manifest(manifest) or {}
    return Sources(prompts=prompts_path, demos=demos_path,
                   ptx_corpus=Path(data.ptx_corpus) if data.ptx_corpus else None,
                   test_prompts=[r.prompt for r in read_records(test_path, "prompt")],
                   report=meta.get("metrics", {}).get("curation", {}))
