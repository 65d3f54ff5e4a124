"""Record formats: validation messages (file, line, field), skip_bad reports, round trips, pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiller.data.formats import (
    DataError,
    Demonstration,
    Pair,
    PromptRecord,
    Ranking,
    SampleSet,
    pair_to_ranking,
    ranking_to_pairs,
)
from tiller.data.io import read_records, write_jsonl

GOOD = {"prompt": "Name a colour.", "responses": ["Red.", "Blue.", "Green."], "ranking": [[1], [0, 2]]}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# (record, field, reason) for each kind of bad ranking line
BAD_RANKINGS = [
    ({**GOOD, "responses": ["Red."], "ranking": [[0]]}, "responses", "needs at least 2 responses to compare, got 1"),
    ({**GOOD, "ranking": [[1], [0]]}, "ranking", "index 2 is missing"),
    ({**GOOD, "ranking": [[1], [0, 2, 1]]}, "ranking", "index 1 appears twice"),
    ({**GOOD, "ranking": [[1], [0, 3]]}, "ranking", "index 3 is out of range for 3 responses"),
    ({**GOOD, "ranking": [[1], [], [0, 2]]}, "ranking", "group 1 is empty"),
    ({**GOOD, "ranking": [1, 0, 2]}, "ranking", "expected a list of groups of response indices, e.g. [[1], [0, 2]]"),
    ({**GOOD, "responses": ["Red.", "  ", "Green."]}, "responses[1]", "empty response"),
    ({**GOOD, "likert": [7, 8, 1]}, "likert[1]", "8 is not an integer in 1-7"),
    ({**GOOD, "likert": [0, 2, 1]}, "likert[0]", "0 is not an integer in 1-7"),
    ({**GOOD, "likert": [3, 2]}, "likert", "2 values for 3 responses"),
    ({**GOOD, "flags": [[], ["rude"], []]}, "flags[1]", "unknown flag 'rude'"),
    ({**GOOD, "responses": "Red."}, "responses", "expected a list of strings"),
    ({**GOOD, "labeler": 7}, "labeler", "expected a string, got int"),
    ({**GOOD, "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
     "prompt", "a prompt must end with a user message"),
    ({k: v for k, v in GOOD.items() if k != "ranking"}, "ranking", "missing"),
    ({k: v for k, v in GOOD.items() if k != "prompt"}, "prompt", "missing"),
    ({**GOOD, "rankings": [[0]]}, "rankings", "unknown field"),
]


@pytest.mark.parametrize("record,field,reason", BAD_RANKINGS)
def test_bad_ranking_names_file_line_and_field(tmp_path, record, field, reason):
    path = _jsonl(tmp_path / "rankings.jsonl", [GOOD, GOOD, record])
    with pytest.raises(DataError) as e:
        read_records(path, "ranking")
    assert str(e.value).startswith(f"{path}:3: field '{field}': {reason}")
    assert (e.value.line, e.value.field) == (3, field)


def test_malformed_json_line_names_the_line(tmp_path):
    path = _jsonl(tmp_path / "r.jsonl", [GOOD, '{"prompt": "x",', GOOD])
    with pytest.raises(DataError, match=rf"^{path}:2: not valid JSON"):
        read_records(path, "rankings")


def test_spec_example_message(tmp_path):
    rows = [GOOD] * 16 + [{"prompt": "p", "responses": list("abcd"), "ranking": [[3], [0, 3], [1, 2]]}]
    path = _jsonl(tmp_path / "rankings.jsonl", rows)
    with pytest.raises(DataError) as e:
        read_records(path, "ranking")
    assert str(e.value) == f"{path}:17: field 'ranking': index 3 appears twice"


def test_skip_bad_reports_every_skipped_line(tmp_path, caplog):
    bad_k = {**GOOD, "responses": ["Red."], "ranking": [[0]]}
    path = _jsonl(tmp_path / "r.jsonl", [GOOD, "not json", GOOD, "", bad_k, GOOD])
    records = read_records(path, "ranking", skip_bad=True)
    assert len(records) == 3
    assert [p.line for p in records.problems] == [2, 5]  # the blank line 4 is not a record
    assert records.problems[1].field == "responses"
    assert f"{path}:5: field 'responses'" in caplog.text


def test_json_list_names_record_index(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "likert": [1, 2, 9]}]))
    with pytest.raises(DataError) as e:
        read_records(path, "ranking")
    assert str(e.value) == f"{path}: record 1: field 'likert[2]': 9 is not an integer in 1-7"


def test_json_file_holding_json_lines_is_read(tmp_path):
    path = _jsonl(tmp_path / "r.json", [GOOD, GOOD])
    assert len(read_records(path, "ranking")) == 2


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_records(tmp_path / "nope.jsonl", "ranking")


@pytest.mark.parametrize(
    "kind,row",
    [
        ("prompt", {"id": "p1", "prompt": [{"role": "user", "content": "Hi"}], "user_id": "u1", "family": "qa",
                    "split": "valid", "consent": False, "meta": {"src": "app"}}),
        ("demonstration", {"prompt": "Say hi.", "response": "Hi!", "labeler": "l1", "id": "d1", "user_id": "u"}),
        ("sample", {"id": "s1", "prompt": [{"role": "user", "content": "Hi"}], "responses": ["a", "b"],
                    "policy": "sft", "user_id": "u", "family": "chat"}),
        ("ranking", {**GOOD, "labeler": "l1", "likert": [2, 7, 5], "id": "r1",
                     "flags": [["fails_instruction"], [], ["hallucination", "opinion"]]}),
        ("pair", {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}),
        ("pair", {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}],
                  "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go"}]}),
    ],
)
def test_round_trip_through_jsonl(tmp_path, kind, row):
    path = tmp_path / "sub" / f"{kind}.jsonl"
    records = read_records(_jsonl(tmp_path / "in.jsonl", [row]), kind)
    assert records[0].to_json() == row
    assert write_jsonl(path, records) == 1
    again = read_records(path, kind)
    assert again[0].to_json() == row
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_prompt_record_text_prompt_becomes_messages():
    r = PromptRecord.from_json({"id": "1", "prompt": "Hi", "user_id": "u"})
    assert r.prompt == [{"role": "user", "content": "Hi"}]
    with pytest.raises(DataError, match="field 'split': 'dev' is not one of train, valid, test"):
        PromptRecord.from_json({"id": "1", "prompt": "Hi", "user_id": "u", "split": "dev"})
    with pytest.raises(DataError, match="field 'consent': expected true/false"):
        PromptRecord.from_json({"id": "1", "prompt": "Hi", "user_id": "u", "consent": "yes"})


def test_empty_responses_refused_by_default_accepted_with_allow_empty(tmp_path):
    hint = "(allow_empty=True, or --allow-empty, accepts empty answers)"
    cases = [
        ("ranking", {**GOOD, "responses": ["Red.", "", "Green."]}, "responses[1]"),
        ("sample", {"id": "s", "prompt": "Hi", "responses": ["a", " "]}, "responses[1]"),
        ("demonstration", {"prompt": "Hi", "response": ""}, "response"),
        ("pair", {"prompt": "Hi", "chosen": "", "rejected": "No."}, "chosen"),
    ]
    for kind, row, field in cases:
        path = _jsonl(tmp_path / f"{kind}.jsonl", [row])
        with pytest.raises(DataError) as e:
            read_records(path, kind)
        assert str(e.value) == f"{path}:1: field '{field}': empty response {hint}"
        assert len(read_records(path, kind, allow_empty=True)) == 1
    # other checks are unchanged with allow_empty
    path = _jsonl(tmp_path / "bad.jsonl", [{**GOOD, "responses": ["", "x"], "ranking": [[0]]}])
    with pytest.raises(DataError, match="field 'ranking': index 1 is missing"):
        read_records(path, "ranking", allow_empty=True)


def test_other_formats_refuse_bad_fields():
    with pytest.raises(DataError, match="field 'response': empty response"):
        Demonstration.from_json({"prompt": "Hi", "response": ""})
    with pytest.raises(DataError, match="field 'id': missing"):
        SampleSet.from_json({"prompt": "Hi", "responses": ["a", "b"]})
    with pytest.raises(DataError, match="field 'prompt': message 0: role 'bot' is not one of"):
        SampleSet.from_json({"id": "s", "prompt": [{"role": "bot", "content": "x"}], "responses": ["a", "b"]})


def test_write_jsonl_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "r.jsonl"
    write_jsonl(path, [GOOD])
    with pytest.raises(TypeError):
        write_jsonl(path, [GOOD, {"x": object()}])
    assert path.read_text() == json.dumps(GOOD) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]


def test_ranking_to_pairs_with_ties():
    r = Ranking(prompt="p", responses=["a", "b", "c", "d"], ranking=[[0], [1, 2], [3]])
    pairs = {(p.chosen, p.rejected) for p in ranking_to_pairs(r)}
    assert pairs == {("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"), ("c", "d")}
    assert len(ranking_to_pairs(r)) == 5
    full = Ranking(prompt="p", responses=list("abcd"), ranking=[[2], [0], [3], [1]])
    assert len(ranking_to_pairs(full)) == 6  # K choose 2
    assert ranking_to_pairs(Ranking(prompt="p", responses=["a", "b"], ranking=[[0, 1]])) == []


def test_pair_to_ranking_and_back():
    p = Pair.from_json({"prompt": "2+2?", "chosen": "4", "rejected": "5"})
    r = pair_to_ranking(p)
    assert (r.prompt, r.responses, r.ranking) == ("2+2?", ["4", "5"], [[0], [1]])
    back = ranking_to_pairs(r)
    assert [(q.prompt, q.chosen, q.rejected) for q in back] == [("2+2?", "4", "5")]


def test_pair_implicit_prompts_as_trl_extracts_them():
    conv = Pair.from_json({
        "chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}],
    })
    assert conv.resolve() == ([{"role": "user", "content": "Sky?"}], "Blue.", "Green.")
    text = Pair.from_json({"chosen": "The sky is blue.", "rejected": "The sky is green."})
    assert text.resolve() == ("The sky is", " blue.", " green.")  # the space goes with the answer (TRL)
    explicit = Pair.from_json({"prompt": [{"role": "user", "content": "Sky?"}],
                               "chosen": [{"role": "assistant", "content": "Blue."}],
                               "rejected": [{"role": "assistant", "content": "Green."}]})
    assert explicit.resolve()[1:] == ("Blue.", "Green.")


def test_pair_refuses_bad_shapes():
    u = {"role": "user", "content": "Hi"}
    with pytest.raises(DataError, match="field 'chosen': conversations differ before their last"):
        Pair.from_json({"chosen": [u, {"role": "assistant", "content": "a"}, u, {"role": "assistant", "content": "b"}],
                        "rejected": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "c"}]})
    with pytest.raises(DataError, match="field 'rejected': chosen and rejected must both be text"):
        Pair.from_json({"chosen": "x", "rejected": [u]})
    with pytest.raises(DataError, match="field 'chosen': expected one assistant message"):
        Pair.from_json({"prompt": "Hi", "chosen": [u], "rejected": "ok"})
    with pytest.raises(DataError, match="field 'rejected': missing"):
        Pair.from_json({"prompt": "Hi", "chosen": "ok"})


def test_parquet_and_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [
        {**GOOD, "labeler": "l1"},
        {"prompt": "Pick.", "responses": ["x", "y"], "ranking": [[1], [0]], "labeler": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    got = read_records(tmp_path / "r.parquet", "ranking")
    assert [r.to_json() for r in got] == [rows[0], {k: v for k, v in rows[1].items() if v is not None}]

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    got = read_records(tmp_path / "ds", "ranking")
    assert [r.ranking for r in got] == [[[1], [0, 2]], [[1], [0]]]

    bad = [rows[0], {**rows[1], "ranking": [[1], [1]]}]
    datasets.Dataset.from_list(bad).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError) as e:
        read_records(tmp_path / "bad", "ranking")
    assert str(e.value) == f"{tmp_path / 'bad'}: record 1: field 'ranking': index 1 appears twice"
