"""Next-token choice and stop/delta handling on explicit tensors and strings."""

from __future__ import annotations

import pytest
import torch

from tiller.chat import SPECIAL_TOKENS
from tiller.rollout import pick_next, top_p_filter
from tiller.serve.decoding import DeltaStream, visible_text


def test_nucleus_keeps_smallest_set_reaching_mass() -> None:
    # serving samples through rollout's filter; on logits (B, V), its kept set renormalised by softmax
    logits = torch.tensor([[0.1, 0.5, 0.3, 0.1]]).log()
    # sorted 0.5, 0.3, 0.1, 0.1; mass before each: 0, 0.5, 0.8, 0.9 -> keep 0.5 and 0.3, renormalise
    kept = top_p_filter(logits, 0.7).softmax(-1)
    torch.testing.assert_close(kept, torch.tensor([[0.0, 0.625, 0.375, 0.0]]))
    # the top token alone already reaches 0.4
    torch.testing.assert_close(top_p_filter(logits, 0.4).softmax(-1), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_pick_next_greedy_and_nucleus() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, -2.0]])

    def draws(temperature: float, top_p: float, n: int) -> set[int]:
        g = torch.Generator().manual_seed(0)
        return {int(pick_next(logits, temperature, top_p, g)[0]) for _ in range(n)}

    assert int(pick_next(logits, temperature=0.0, top_p=1.0)[0]) == 1
    # softmax mass of token 1 is e^3 / (1 + e^3 + e + e^-2) = 0.84 > 0.5: the nucleus is token 1 only
    assert draws(1.0, 0.5, 50) == {1}
    # with the full distribution every token with real mass appears over many draws
    assert draws(5.0, 1.0, 400) == {0, 1, 2, 3}


def test_pick_next_same_seed_same_tokens() -> None:
    logits = torch.zeros(1, 50)

    def draws(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return [int(pick_next(logits, 1.0, 1.0, g)[0]) for _ in range(20)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)  # 20 uniform draws from 50 tokens: equal by chance with p = 50^-20


@pytest.mark.parametrize(
    ("text", "final", "expected"),
    [
        ("Hello<|end|>more", False, ("Hello", True)),  # cut before the marker, even mid-generation
        ("  Hi there <|user|>\nnext", True, ("Hi there", True)),  # a role header ends the answer too
        ("Hello <|e", False, ("Hello", False)),  # '<|e' may become <|end|>: held back
        ("Hello <|e", True, ("Hello <|e", False)),  # ...but at the end it was just text
        ("a <b", False, ("a <b", False)),  # '<b' starts no marker
        ("caf\ufffd", False, ("caf", False)),  # an unfinished UTF-8 character waits
        ("caf\ufffd", True, ("caf\ufffd", False)),
        ("\ufffd x", False, ("\ufffd x", False)),  # a settled replacement character is shown
        ("\n two  ", False, ("two", False)),  # whitespace at either end never shows mid-stream
    ],
)
def test_visible_text(text: str, final: bool, expected: tuple[str, bool]) -> None:
    assert visible_text(text, SPECIAL_TOKENS, final) == expected


def test_user_stop_string_cuts_first_occurrence() -> None:
    assert visible_text("one. two. three.", [*SPECIAL_TOKENS, "two"], final=False) == ("one.", True)
    assert visible_text("one. tw", [*SPECIAL_TOKENS, "two"], final=False) == ("one.", False)


def _stream_bytes(data: bytes, stops: list[str]) -> tuple[list[str], DeltaStream]:
    """Feed a DeltaStream the decode of every byte prefix, the worst case of a byte-level tokenizer."""
    stream = DeltaStream(stops)
    deltas = [stream.update(data[:i].decode("utf-8", errors="replace")) for i in range(1, len(data) + 1)]
    if not stream.stopped:
        deltas.append(stream.update(data.decode("utf-8", errors="replace"), final=True))
    return deltas, stream


def test_deltas_concatenate_to_final_text_byte_by_byte() -> None:
    data = "  Héllo wörld ✓ <|e <x> done \n".encode()
    deltas, stream = _stream_bytes(data, SPECIAL_TOKENS)
    assert "".join(deltas) == stream.text == "Héllo wörld ✓ <|e <x> done"
    assert all("\ufffd" not in d for d in deltas)  # no half characters were ever shown


def test_deltas_stop_at_marker_byte_by_byte() -> None:
    data = b"Sure: 5.<|end|>\n<|user|>\nagain"
    deltas, stream = _stream_bytes(data, SPECIAL_TOKENS)
    assert stream.stopped
    assert "".join(d for d in deltas) == "Sure: 5."
    assert all("<" not in d for d in deltas)
