"""Import files: each malformed record is named by line and field."""

from __future__ import annotations

import json

import pytest

from tiller.feedback.records import RecordError, parse_lines

GOOD = {"id": "a", "prompt": [{"role": "user", "content": "hi"}], "responses": ["x", "y"]}


def lines(*records: object) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({**GOOD, "id": ""}, "id"),
        ({k: v for k, v in GOOD.items() if k != "prompt"}, "prompt"),
        ({**GOOD, "prompt": [{"role": "robot", "content": "x"}]}, "prompt"),
        ({**GOOD, "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "prompt"),
        ({**GOOD, "responses": ["only one"]}, "responses"),
        ({**GOOD, "responses": ["x", 3]}, "responses[1]"),
        ({**GOOD, "policy": 7}, "policy"),
        ("{not json", "(json)"),
        ([1, 2], "(record)"),
    ],
)
def test_bad_record_names_line_and_field(bad: object, field: str) -> None:
    with pytest.raises(RecordError) as e:
        parse_lines(lines({**GOOD, "id": "ok"}, "", bad), "rank", source="s.jsonl")
    assert e.value.line == 3 and e.value.field == field
    assert str(e.value).startswith(f"s.jsonl:3: field '{field}'")


def test_duplicate_ids_and_empty_files_are_refused() -> None:
    with pytest.raises(RecordError, match="duplicate id 'a' \\(first on line 1\\)"):
        parse_lines(lines(GOOD, GOOD), "rank")
    with pytest.raises(RecordError, match="no records"):
        parse_lines("\n\n", "rank")


def test_demo_prompts_need_no_responses_and_strings_become_messages() -> None:
    items = parse_lines(lines({"id": "d1", "prompt": "Write a haiku.", "family": "poem"}), "demo")
    assert items[0].prompt == [{"role": "user", "content": "Write a haiku."}]
    assert items[0].responses is None and items[0].meta == {"family": "poem"}
