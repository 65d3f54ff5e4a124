"""Batching: the response-only SFT mask, prompt left-truncation, padding sides, packing."""

from __future__ import annotations

import pytest

from tiller.batching import (
    IGNORE,
    batch,
    encode_prompt,
    encode_response,
    join,
    pack_examples,
    pad,
    sft_example,
)
from tiller.chat import END


@pytest.fixture(scope="module")
def tok():
    from tiller.stages.pretrain import train_tokenizer

    docs = ["The cat sat on the mat.", "What is 2 + 3? It is 5.", "Hello there, friend."] * 20
    return train_tokenizer(docs, 300)


def test_sft_mask_on_hand_example():
    ids, labels = sft_example([1, 2, 3, 4], [5, 6, 7], max_len=7)  # exactly fits
    assert ids == [1, 2, 3, 4, 5, 6, 7]
    assert labels == [IGNORE, IGNORE, IGNORE, IGNORE, 5, 6, 7]


@pytest.mark.parametrize("max_len", [8, 9, 10, 12, 20])
def test_short_prompt_is_never_cut(max_len):
    ids, labels = sft_example([1, 2, 3, 4], [5, 6, 7], max_len=max_len)
    assert ids == [1, 2, 3, 4, 5, 6, 7]
    assert labels == [IGNORE, IGNORE, IGNORE, IGNORE, 5, 6, 7]


def test_long_prompt_loses_its_start_not_the_answer():
    ids, labels = sft_example([1, 2, 3, 4], [5, 6, 7], max_len=5)
    assert ids == [3, 4, 5, 6, 7]
    assert labels == [IGNORE, IGNORE, 5, 6, 7]
    assert join([1, 2, 3, 4], [5, 6, 7], 3) == ([5, 6, 7], 0)  # no room for any prompt
    assert join([1, 2, 3, 4], [5, 6, 7, 8, 9], 3) == ([5, 6, 7], 0)  # answer longer than max_len: its end is cut
    assert join([1, 2], [5], 10) == ([1, 2, 5], 2)


def test_sft_mask_with_the_chat_tokenizer_keeps_the_end_marker(tok):
    p = encode_prompt(tok, "What is 2 + 3?")
    r = encode_response(tok, "It is 5.")
    end_id = tok.convert_tokens_to_ids(END)
    assert r[-1] == end_id and r.count(end_id) == 1  # <|end|> is one token, last
    assert tok.decode(p) == "<|user|>\nWhat is 2 + 3?<|end|>\n<|assistant|>\n"
    ids, labels = sft_example(p, r, max_len=200)
    assert ids == p + r
    assert labels[: len(p)] == [IGNORE] * len(p)  # every prompt token masked, including its own <|end|>
    assert labels[len(p):] == r
    assert [t for t in labels if t != IGNORE][-1] == end_id  # the model learns to stop


def test_pad_right_and_left():
    assert pad([[1, 2], [3]], 0).tolist() == [[1, 2], [3, 0]]
    assert pad([[1, 2], [3]], 0, side="left").tolist() == [[1, 2], [0, 3]]
    b = batch([[7, 8, 9], [5]], pad_id=1, side="left")
    assert b["input_ids"].tolist() == [[7, 8, 9], [1, 1, 5]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    b = batch([[7, 8, 9], [5]], pad_id=1)
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pack_examples_greedy_rows():
    ex = [([1, 2], [IGNORE, 2]), ([3, 4], [IGNORE, 4]), ([5, 6, 7], [IGNORE, 6, 7]), ([8], [8])]
    rows = pack_examples(ex, block=5, pad_id=0)
    assert rows == [([1, 2, 3, 4], [IGNORE, 2, IGNORE, 4]), ([5, 6, 7, 8], [IGNORE, 6, 7, 8])]
    assert all(len(i) == len(lab) for i, lab in rows)
