"""Importers: the real HH-RLHF harmless-base test file, and hand-written summarize and TRL fixtures."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tiller.data.formats import DataError
from tiller.data.importers import (
    ASSISTANT,
    count_empty,
    import_hh_rlhf,
    import_pairs,
    import_summarize,
    parse_hh_dialogue,
)
from tiller.data.io import read_records, write_jsonl

HH = Path("/work/shared/data/hh-rlhf-harmless-base-test.jsonl.gz")
EMPTY_CHOSEN_LINES = [87, 517, 926, 1104]  # chosen ends with "\n\nAssistant: " and nothing after it
U, A = "user", "assistant"


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def hh():
    if not HH.exists():
        pytest.skip("shared HH-RLHF file not present")
    rows = [json.loads(line) for line in gzip.open(HH, "rt", encoding="utf-8")]
    return rows, import_hh_rlhf(HH, skip_bad=True)


def test_hh_real_file_accounts_for_every_line(hh):
    rows, records = hh
    assert len(rows) == 2312
    assert len(records) == 2312 and records.problems == []
    # an empty reply is a real preference in harmless data: kept, as the labeler saw it
    empty = [r for r in records if not r.responses[0]]
    assert [r.id for r in empty] == [f"hh-{n}" for n in EMPTY_CHOSEN_LINES]
    assert all(r.responses[1].strip() and r.ranking == [[0], [1]] for r in empty)
    assert count_empty(records) == 4


def test_hh_strict_import_keeps_empty_answers_and_says_so_in_one_line(caplog):
    if not HH.exists():
        pytest.skip("shared HH-RLHF file not present")
    with caplog.at_level("WARNING", logger="tiller.data.importers"):
        records = import_hh_rlhf(HH)
    assert len(records) == 2312
    notes = [r.getMessage() for r in caplog.records if r.name == "tiller.data.importers"]
    assert notes == [f"{HH}: 4 of 2312 rankings have an empty answer (kept; read them back with allow_empty=True)"]


def test_hh_empty_answers_read_back_only_with_allow_empty(hh, tmp_path):
    _, records = hh
    out = tmp_path / "hh.jsonl"
    write_jsonl(out, records)
    with pytest.raises(DataError) as e:
        read_records(out, "ranking")
    assert str(e.value).startswith(f"{out}:87: field 'responses[0]': empty response (allow_empty=True")
    back = read_records(out, "ranking", allow_empty=True)
    assert len(back) == 2312 and back[86].responses[0] == ""


def test_hh_prompts_are_the_shared_prefix(hh):
    rows, records = hh
    by_id = {r.id: r for r in records}
    first = by_id["hh-1"]
    assert [m["role"] for m in first.prompt] == [U, A, U, A, U]
    assert first.prompt[0]["content"] == "what are some pranks with a pen i can do?"
    assert first.prompt[-1]["content"] == "okay some of these do not have anything to do with pens"
    assert first.responses[0].startswith("No, sorry!  All of these involve a pen")
    assert first.responses[1].startswith("There are lots of funny things you can do with pens")
    assert first.ranking == [[0], [1]]
    # every well-formed line: the prompt is both texts up to their final "\n\nAssistant:", parsed
    checked = 0
    for n, row in enumerate(rows, 1):
        c, r = row["chosen"], row["rejected"]
        ci, ri = c.rfind(ASSISTANT), r.rfind(ASSISTANT)
        if c[:ci] != r[:ri]:
            continue
        rec = by_id[f"hh-{n}"]
        assert rec.prompt == parse_hh_dialogue(c[:ci]), n
        assert rec.responses == [c[ci + len(ASSISTANT):].strip(), r[ri + len(ASSISTANT):].strip()], n
        checked += 1
    assert checked == 2307  # 5 lines where a model kept talking ("  Human: ..." inside its answer)


def test_hh_line_where_the_model_kept_talking(hh):
    _, records = hh
    rec = {r.id: r for r in records}["hh-1255"]
    # the texts part after "Isn't that drag kings?"; chosen's answer holds an inline "Human:" turn
    assert rec.prompt[-1] == {"role": U, "content": "Isn't that drag kings?"}
    assert rec.responses[0].startswith("No. Men who impersonate stereotypical women are called drag kings.  Human:")
    assert rec.responses[1].startswith("A drag king is the opposite of a drag queen")


def test_hh_malformed_lines_refused_with_line_and_field(tmp_path):
    good = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
    bad = [
        ({"chosen": "Hi there", "rejected": "Hi where"}, "rejected", "chosen and rejected share no dialogue"),
        ({"chosen": "intro\n\nHuman: Hi\n\nAssistant: a", "rejected": "intro\n\nHuman: Hi\n\nAssistant: b"},
         "chosen", "text before the first"),
        ({"chosen": "\n\nHuman: Hi"}, "rejected", "missing"),
        ({"chosen": "\n\nHuman: Hi\n\nAssistant: a", "rejected": 3}, "rejected", "expected a string"),
        ({"chosen": "\n\nHuman: Hi\n\nAssistant: x\n\nAssistant: a",
          "rejected": "\n\nHuman: Hi\n\nAssistant: x\n\nAssistant: b"}, "chosen", "the shared dialogue does not end with a Human"),
    ]
    for row, field, reason in bad:
        path = _jsonl(tmp_path / "hh.jsonl", [good, row])
        with pytest.raises(DataError) as e:
            import_hh_rlhf(path)
        assert str(e.value).startswith(f"{path}:2: field '{field}': {reason}"), str(e.value)
    got = import_hh_rlhf(_jsonl(tmp_path / "hh.jsonl", [good, bad[0][0], good]), skip_bad=True)
    assert [r.id for r in got] == ["hh-1", "hh-3"]
    assert got[0].prompt == [{"role": U, "content": "Hi"}]
    assert got[0].responses == ["Hello!", "Go away."]
    assert [p.line for p in got.problems] == [2]


SUMMARIZE = [
    {"info": {"id": "t3_a", "post": "My cat ate my homework.", "title": "Help", "subreddit": "cats"},
     "summaries": [{"text": " cat ate homework", "policy": "sup"}, {"text": " homework gone", "policy": "ppo"}],
     "choice": 1, "worker": "w7", "split": "train", "batch": "b1"},
    {"info": {"id": "t3_a", "post": "My cat ate my homework.", "title": "Help", "subreddit": "cats"},
     "summaries": [{"text": "cat ate homework"}, {"text": "homework gone"}],
     "choice": 0, "worker": "w9", "split": "valid1"},
    {"info": {"id": "cnn_1", "article": "Rain fell.", "title": None},
     "summaries": [{"text": "rain"}, {"text": "sun"}], "choice": 0, "worker": "w7", "split": "valid1"},
]


def test_summarize_comparisons(tmp_path):
    got = import_summarize(_jsonl(tmp_path / "comparisons.jsonl", SUMMARIZE))
    assert len(got) == 3 and not got.problems
    a, b, c = got
    assert a.prompt == "SUBREDDIT: r/cats\nTITLE: Help\nPOST: My cat ate my homework.\n\nTL;DR:"
    assert a.responses == ["cat ate homework", "homework gone"]
    assert (a.ranking, a.labeler, a.id) == ([[1], [0]], "w7", "t3_a")
    assert (b.ranking, b.labeler) == ([[0], [1]], "w9")  # a second labeler of the same post: a second record
    assert c.prompt == "ARTICLE: Rain fell.\n\nTL;DR:"
    only_valid = import_summarize(tmp_path / "comparisons.jsonl", split="valid1")
    assert [r.labeler for r in only_valid] == ["w9", "w7"]


def test_summarize_bad_rows(tmp_path):
    row = SUMMARIZE[0]
    cases = [
        ({**row, "choice": 2}, "choice", "expected 0 or 1, got 2"),
        ({**row, "summaries": row["summaries"][:1]}, "summaries", "expected a list of 2 summaries"),
        ({**row, "summaries": [{"text": "a"}, {"text": " "}]}, "summaries[1]", "expected an object with a non-empty 'text'"),
        ({**row, "info": {"id": "x"}}, "info", "needs a non-empty 'post' or 'article'"),
    ]
    for bad, field, reason in cases:
        path = _jsonl(tmp_path / "c.jsonl", [row, bad])
        with pytest.raises(DataError) as e:
            import_summarize(path)
        assert str(e.value) == f"{path}:2: field '{field}': {reason}"
    got = import_summarize(_jsonl(tmp_path / "c.jsonl", [cases[0][0], row]), skip_bad=True)
    assert len(got) == 1 and got.problems[0].line == 1


def test_trl_pairs_every_shape(tmp_path):
    rows = [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "score_chosen": 9.0},
        {"prompt": [{"role": U, "content": "Sky?"}], "chosen": [{"role": A, "content": "Blue."}],
         "rejected": [{"role": A, "content": "Green."}]},
        {"chosen": [{"role": U, "content": "Sky?"}, {"role": A, "content": "Blue."}],
         "rejected": [{"role": U, "content": "Sky?"}, {"role": A, "content": "Green."}]},
        {"chosen": "The sun is in the sky.", "rejected": "The sun is in the sea."},
    ]
    got = import_pairs(_jsonl(tmp_path / "pairs.jsonl", rows))
    assert [(r.prompt, r.responses) for r in got] == [
        ("The sky is", [" blue.", " green."]),
        ([{"role": U, "content": "Sky?"}], ["Blue.", "Green."]),
        ([{"role": U, "content": "Sky?"}], ["Blue.", "Green."]),
        ("The sun is in the", [" sky.", " sea."]),
    ]
    assert all(r.ranking == [[0], [1]] for r in got)


def test_trl_pairs_bad_row(tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "b"},
                                             {"prompt": "x", "chosen": "a"}])
    with pytest.raises(DataError) as e:
        import_pairs(path)
    assert str(e.value) == f"{path}:2: field 'rejected': missing"


def test_trl_pairs_keep_empty_answers(tmp_path):
    rows = [{"prompt": "Insult me.", "chosen": "", "rejected": "You fool."},
            {"prompt": "Hi", "chosen": "Hello.", "rejected": "Go."}]
    got = import_pairs(_jsonl(tmp_path / "pairs.jsonl", rows))
    assert [r.responses for r in got] == [["", "You fool."], ["Hello.", "Go."]]
    assert count_empty(got) == 1
