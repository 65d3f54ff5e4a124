"""The one chat format: rendering, parsing back, and refusing malformed conversations."""

from __future__ import annotations

import pytest

from tiller.chat import (
    ChatFormatError,
    clean_response,
    parse_conversation,
    prompt_key,
    render_conversation,
    render_prompt,
    render_response,
    to_messages,
)

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?\nShow it."},
    {"role": "assistant", "content": "2 + 3 = 5."},
    {"role": "user", "content": "And 2 + 4?"},
]


def test_render_prompt_exact_text():
    assert render_prompt("Hi") == "<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert render_prompt(CONV).endswith("<|user|>\nAnd 2 + 4?<|end|>\n<|assistant|>\n")
    assert render_response("Hello.") == "Hello.<|end|>"


def test_round_trip_conversation():
    assert parse_conversation(render_conversation(CONV)) == CONV


def test_round_trip_prompt_plus_response():
    text = render_prompt(CONV) + render_response("6.")
    assert parse_conversation(text) == [*CONV, {"role": "assistant", "content": "6."}]
    # an open assistant header alone is a prompt, not an empty answer
    assert parse_conversation(render_prompt(CONV)) == CONV


def test_text_prompt_and_one_user_message_share_a_key():
    assert prompt_key("Hi") == prompt_key([{"role": "user", "content": "Hi"}])
    assert prompt_key("Hi") != prompt_key("Hi.")


@pytest.mark.parametrize(("prompt", "match"), [
    ([{"role": "bot", "content": "x"}], "message 0: role 'bot' is not one of system, user, assistant"),
    ([{"role": "user"}], "message 0 must be an object with 'role' and 'content'"),
    ([{"role": "user", "content": 3}], "message 0: content must be a string"),
    ([{"role": "user", "content": "x", "extra": 1}], "message 0 must be an object"),
    ([], "non-empty list"),
    ({"role": "user", "content": "x"}, "non-empty list"),
])
def test_bad_messages_refused(prompt, match):
    with pytest.raises(ChatFormatError, match=match):
        to_messages(prompt)


def test_prompt_must_end_with_user():
    with pytest.raises(ChatFormatError, match="must end with a user message"):
        render_prompt(CONV[:3])


def test_clean_response_cuts_at_first_marker():
    assert clean_response(" 5.<|end|>\n<|user|>\nmore") == "5."
    assert clean_response("5.\n<|user|>\nAnd") == "5."
    assert clean_response("no marker ") == "no marker"
