"""The data commands through Typer: output files, counts, and one-line errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from tiller.data.cli import app
from tiller.data.io import read_records

runner = CliRunner()
HH_GOOD = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
HH_EMPTY = {"chosen": "\n\nHuman: Hi\n\nAssistant: ", "rejected": "\n\nHuman: Hi\n\nAssistant: No."}
HH_BAD = {"chosen": "intro\n\nHuman: Hi\n\nAssistant: a", "rejected": "intro\n\nHuman: Hi\n\nAssistant: b"}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_import_then_validate(tmp_path):
    src = _jsonl(tmp_path / "hh.jsonl", [HH_GOOD, HH_GOOD])
    out = tmp_path / "out" / "rankings.jsonl"
    r = runner.invoke(app, ["import", "hh-rlhf", str(src), str(out)])
    assert r.exit_code == 0, r.output
    assert f"wrote 2 rankings to {out}" in r.stdout
    assert [x.responses for x in read_records(out, "ranking")] == [["Hello!", "Go away."]] * 2
    r = runner.invoke(app, ["validate", "rankings", str(out)])
    assert r.exit_code == 0
    assert r.stdout.strip() == f"{out}: 2 rankings (K=2: 2); 2 implied pairs; 0 with ties; 0 labelers"


def test_import_keeps_empty_answers_with_a_one_line_note(tmp_path):
    src = _jsonl(tmp_path / "hh.jsonl", [HH_GOOD, HH_EMPTY])
    out = tmp_path / "rankings.jsonl"
    r = runner.invoke(app, ["import", "hh-rlhf", str(src), str(out)])
    assert r.exit_code == 0, r.output
    assert r.stderr.strip().splitlines() == [
        "note: 1 of 2 rankings have an empty answer (kept; read them with allow_empty=true, "
        "or validate with --allow-empty)"
    ]
    r = runner.invoke(app, ["validate", "rankings", str(out)])
    assert r.exit_code == 2
    assert r.stderr.strip() == (f"{out}:2: field 'responses[0]': empty response "
                                "(allow_empty=True, or --allow-empty, accepts empty answers)")
    r = runner.invoke(app, ["validate", "rankings", str(out), "--allow-empty"])
    assert r.exit_code == 0
    assert r.stdout.strip().startswith(f"{out}: 2 rankings")


def test_import_bad_line_exits_2_with_one_line(tmp_path):
    src = _jsonl(tmp_path / "hh.jsonl", [HH_GOOD, HH_BAD])
    out = tmp_path / "rankings.jsonl"
    r = runner.invoke(app, ["import", "hh-rlhf", str(src), str(out)])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        f"{src}:2: field 'chosen': text before the first '\\n\\nHuman:' turn (--skip-bad skips bad lines)"
    ]
    assert not out.exists()
    r = runner.invoke(app, ["import", "hh-rlhf", str(src), str(out), "--skip-bad"])
    assert r.exit_code == 0
    assert f"skipped {src}:2: field 'chosen'" in r.stderr and "skipped 1 bad record(s)" in r.stderr
    assert len(read_records(out, "ranking")) == 1


def test_import_unknown_format_and_missing_file(tmp_path):
    r = runner.invoke(app, ["import", "csv", "a", "b"])
    assert r.exit_code == 2 and "unknown format 'csv'" in r.stderr
    r = runner.invoke(app, ["import", "pairs", str(tmp_path / "nope.jsonl"), str(tmp_path / "o.jsonl")])
    assert r.exit_code == 2 and r.stderr.strip() == f"{tmp_path / 'nope.jsonl'}: file not found"


def test_import_summarize_split(tmp_path):
    row = {"info": {"post": "p", "title": "t", "subreddit": "s"}, "summaries": [{"text": "a"}, {"text": "b"}],
           "choice": 1, "worker": "w", "split": "train"}
    src = _jsonl(tmp_path / "c.jsonl", [row, {**row, "split": "valid1"}])
    out = tmp_path / "r.jsonl"
    r = runner.invoke(app, ["import", "summarize", str(src), str(out), "--split", "valid1"])
    assert r.exit_code == 0, r.output
    assert [x.ranking for x in read_records(out, "ranking")] == [[[1], [0]]]


def test_validate_reports_first_problem(tmp_path):
    good = {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [[0], [1, 2]], "labeler": "l"}
    path = _jsonl(tmp_path / "r.jsonl", [good, {**good, "flags": [["rude"], [], []]}])
    r = runner.invoke(app, ["validate", "ranking", str(path)])
    assert r.exit_code == 2
    assert r.stderr.strip().startswith(f"{path}:2: field 'flags[0]': unknown flag 'rude'")
    path = _jsonl(tmp_path / "ok.jsonl", [good, good])
    r = runner.invoke(app, ["validate", "ranking", str(path)])
    assert r.stdout.strip() == f"{path}: 2 rankings (K=3: 2); 4 implied pairs; 2 with ties; 1 labelers"
    r = runner.invoke(app, ["validate", "widgets", str(path)])
    assert r.exit_code == 2 and "unknown kind 'widgets'" in r.stderr


def test_prompts_command(tmp_path):
    rows = [
        {"id": "1", "prompt": "Tell me a joke about cats and dogs and birds.", "user_id": "a"},
        {"id": "2", "prompt": "Tell me a joke about cats and dogs and fish.", "user_id": "a"},
        {"id": "3", "prompt": "My email is a@b.com", "user_id": "b"},
        {"id": "4", "prompt": "No consent", "user_id": "c", "consent": False},
    ]
    src = _jsonl(tmp_path / "prompts.jsonl", rows)
    cfg = tmp_path / "cur.yaml"
    cfg.write_text("prefix_chars: 30\nvalid_frac: 0.0\n")
    out = tmp_path / "cur"
    r = runner.invoke(app, ["prompts", str(src), str(out), "--config", str(cfg), "test_frac=0.0"])
    assert r.exit_code == 0, r.output
    kept = read_records(out / "prompts.jsonl", "prompt")
    assert [(p.id, p.split) for p in kept] == [("1", "train"), ("3", "train")]
    assert kept[1].prompt[0]["content"] == "My email is [EMAIL]"
    report = json.loads((out / "curation.json").read_text())
    assert report["removed"] == {"no_consent": 1, "duplicate_prefix": 1, "over_user_cap": 0}
    assert report["config"]["prefix_chars"] == 30 and report["source"] == str(src)


def test_prompts_command_bad_input(tmp_path):
    src = _jsonl(tmp_path / "prompts.jsonl", [{"id": "1", "prompt": "x"}])
    r = runner.invoke(app, ["prompts", str(src), str(tmp_path / "o")])
    assert r.exit_code == 2 and r.stderr.strip() == f"{src}:1: field 'user_id': missing"
    src = _jsonl(tmp_path / "ok.jsonl", [{"id": "1", "prompt": "x", "user_id": "u"}])
    r = runner.invoke(app, ["prompts", str(src), str(tmp_path / "o"), "max_per_usr=3"])
    assert r.exit_code == 2 and "unknown key 'max_per_usr'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_mounts_at_top_level():
    main = typer.Typer()

    @main.command()
    def other() -> None:
        """Another stage."""

    main.add_typer(app)
    r = runner.invoke(main, ["validate", "ranking", "/nonexistent.jsonl"])
    assert r.exit_code == 2 and "file not found" in r.stderr
