"""The one text rule (issue #15), shared by every reader, ``tiller validate`` and the labeling app: no NUL, no
lone surrogate, no empty prompt; plus the optional metadata a ranking or demonstration keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiller.data.cli import app as data_cli
from tiller.data.formats import (
    DataError,
    Demonstration,
    Ranking,
    check_name,
    check_text,
    clean_text,
    normalize_newlines,
)
from tiller.data.importers import hh_to_ranking
from tiller.data.io import read_records

GOOD = {"prompt": "Name a colour.", "responses": ["Red.", "Blue."], "ranking": [[1], [0]]}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json.dumps writes \ud800 and \u0000 escaped
    return path


@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800b", "\udfff"])
def test_check_text_refuses_nul_and_lone_surrogates(bad: str) -> None:
    with pytest.raises(DataError, match="at character") as e:
        check_text(bad, "response")
    assert e.value.field == "response"
    assert "\ufffd" in clean_text(bad) and clean_text({"k\x00": [bad]}) == {"k\ufffd": [clean_text(bad)]}
    assert check_text("emoji \U0001f600 and\ttabs\n") == "emoji \U0001f600 and\ttabs\n"


@pytest.mark.parametrize(("record", "field"), [
    ({**GOOD, "prompt": "p\ud800"}, "prompt"),
    ({**GOOD, "prompt": [{"role": "user", "content": "p\x00"}]}, "prompt[0].content"),
    ({**GOOD, "prompt": [{"role": "user", "content": " "}]}, "prompt"),
    ({**GOOD, "responses": ["Red.", "B\x00"]}, "responses[1]"),
    ({**GOOD, "labeler": "x\ud800"}, "labeler"),
    ({**GOOD, "time_spent_s": -1}, "time_spent_s"),
])
def test_validate_refuses_bad_text_naming_line_and_field(tmp_path: Path, record: dict, field: str) -> None:
    path = _jsonl(tmp_path / "r.jsonl", [GOOD, record])
    with pytest.raises(DataError) as e:
        read_records(path, "ranking")
    assert (e.value.line, e.value.field) == (2, field)
    result = CliRunner().invoke(data_cli, ["validate", "ranking", str(path)])
    assert result.exit_code == 2 and f"r.jsonl:2: field '{field}'" in result.output


def test_importers_refuse_bad_text() -> None:
    with pytest.raises(DataError) as e:
        hh_to_ranking({"chosen": "\n\nHuman: hi\x00\n\nAssistant: a", "rejected": "\n\nHuman: hi\x00\n\nAssistant: b"})
    assert e.value.field == "chosen"


def test_rankings_and_demonstrations_keep_metadata_and_time() -> None:
    row = {**GOOD, "policy": "sft-1", "user_id": "u1", "family": "qa", "time_spent_s": 12.5}
    assert Ranking.from_json(row).to_json() == row
    demo = {"prompt": "Write.", "response": "Done.", "family": "poem", "policy": "human", "time_spent_s": 3.0}
    assert Demonstration.from_json(demo).to_json() == demo


@pytest.mark.parametrize("name", ["round1/a", "..", ".x", "a b", "", "x" * 129, "a\x00"])
def test_names_that_are_not_one_path_segment_are_refused(name: str) -> None:
    with pytest.raises(DataError):
        check_name(name)
    assert check_name("rm-round_1.a") == "rm-round_1.a"


def test_newlines_are_normalised() -> None:
    assert normalize_newlines("a\r\nb\rc\n") == "a\nb\nc\n"
