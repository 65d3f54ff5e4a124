"""Pure pieces of decoding: turning a growing text into safe deltas.

Kept apart from the engine so each is tested on explicit strings. The next token is chosen by
``tiller.rollout.pick_next``: serving and RL sample from the same distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

# The replacement character a byte-level tokenizer decodes an unfinished UTF-8 sequence to; the next
# token may complete it, so a stream holds it back while it is the last thing in the text.
_INCOMPLETE = "\ufffd"


def _held_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that could still grow into a stop string."""
    longest = max((len(s) for s in stops), default=0)
    for n in range(min(len(text), longest - 1), 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stops):
            return n
    return 0


def visible_text(text: str, stops: Sequence[str], final: bool) -> tuple[str, bool]:
    """The part of a decoded continuation that can be shown, and whether a stop string ended it.

    The answer is cut before the first stop string and stripped (as ``tiller.chat.clean_response``).
    While generation goes on (``final`` False), anything the next tokens could still change is held back:
    the start of a possible stop string, an unfinished UTF-8 character and trailing whitespace. So what
    is visible at one step is always a prefix of what is visible at the end."""
    hits = [i for i in (text.find(s) for s in stops if s) if i != -1]
    if hits:
        return text[: min(hits)].strip(), True
    if not final:
        text = text[: len(text) - _held_suffix(text, stops)].rstrip(_INCOMPLETE)
    return text.strip(), False


class DeltaStream:
    """Turns successive decodes of the generated ids into text deltas that never need taking back.

    Concatenating every delta gives exactly the final visible text."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""  # everything emitted so far
        self.stopped = False

    def update(self, decoded: str, final: bool = False) -> str:
        visible, self.stopped = visible_text(decoded, self.stops, final)
        if not visible.startswith(self.text):
            # A decoder that rewrote earlier text (rare outside byte-level BPE): wait for it to settle.
            return ""
        delta = visible[len(self.text) :]
        self.text = visible
        return delta
