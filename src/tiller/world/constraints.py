"""Explicit constraints, as real instructions carry them ("in one sentence", "in 3 words or fewer").

InstructGPT's labelers checked, for every answer, whether it "follows the explicit constraints in the
instruction" (fig. 4, app. B), and its PPO models did so more often than SFT. Here a share of every family's
prompts (``WorldConfig.constraint_fraction``) gets one extra sentence naming a constraint that a reader can
check by eye, the task's ideal answer is rewritten to meet it, and the judge checks it as its own aspect
(``constraint``, weighted in :data:`tiller.world.judge.WEIGHTS`).

The kinds, and the habit that breaks each (what a demo writer who misses it writes):

- ``words``: "Answer in N words or fewer." The ideal becomes the bare answer ("42.", "Kalder."); the miss
  is the family's usual full sentence ("17 + 25 = 42.").
- ``start``: 'Start your answer with "Answer:".' The miss leaves the prefix out.
- ``exclaim``: "End your answer with an exclamation mark." The miss ends with a full stop.
- ``sentence``: "Answer in one sentence." The miss adds a second sentence.

All randomness comes from the caller's generator, which is a separate stream from the prompts' own, so
``constraint_fraction: 0`` builds the world of earlier versions byte for byte.
"""

from __future__ import annotations

import random
import re
from typing import Any

from tiller.chat import Messages
from tiller.world.tasks import REFUSAL, Task

KINDS = ("words", "start", "exclaim", "sentence")
START_WORD = "Answer:"
# What a writer who misses "one sentence" adds: a second sentence, neutral in content and form.
SECOND_SENTENCES = ("I hope that is clear.", "That is my answer.", "I checked it twice.")
SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
WORDS_CHECKS = ("number", "sequence", "word", "fact", "unknown", "refuse")


def sentences(text: str) -> list[str]:
    return [s for s in SENTENCE_SPLIT.split(text.strip()) if s.strip()]


def bare_answer(task: Task) -> str:
    """The shortest complete answer: the value alone ("42.", "2, 5, 9.", "Kalder."), a short refusal."""
    p = task.params
    if task.check == "number":
        return f"{p['answer']}."
    if task.check == "sequence":
        return ", ".join(p["answer"]) + "."
    if task.check == "word":
        return f"{p['answer']}."
    if task.check == "fact":
        return f"A {p['answer']}." if p["attr"] == "job" else f"{p['answer']}."
    if task.check == "unknown":
        return "I don't know."
    if task.check == "refuse":
        return REFUSAL
    raise ValueError(f"no bare answer for check {task.check!r}")


def applicable(task: Task) -> list[str]:
    """The kinds that make sense for this task (an ideal already ending in "!" gets no ``exclaim``)."""
    kinds = ["start"]
    if task.check == "refuse" or (task.check in WORDS_CHECKS
                                  and len(bare_answer(task).split()) < len(task.ideal.split())):
        kinds.append("words")  # not where the ideal is already bare ("2, 5, 9."); a refusal's miss is wordier
    if task.ideal.rstrip().endswith("."):
        kinds.append("exclaim")
    kinds.append("sentence")
    return [k for k in KINDS if k in kinds]


def constrain(messages: Messages, task: Task, rng: random.Random) -> tuple[Messages, Task]:
    """The prompt with one constraint appended to its last user turn, and the task with the ideal meeting it.

    ``task.params["constraint"]`` holds what the judge checks, ``task.params["unconstrained"]`` the ideal
    without the constraint (what a writer who misses the constraint writes)."""
    kind = rng.choice(applicable(task))
    ideal, spec = task.ideal, dict[str, Any](kind=kind)
    if kind == "words":
        bare = bare_answer(task)
        spec["max_words"] = len(bare.split()) + (0 if task.check == "refuse" else 1)
        instruction = f"Answer in {spec['max_words']} words or fewer."
        ideal = bare
    elif kind == "start":
        instruction = f'Start your answer with "{START_WORD}".'
        ideal = f"{START_WORD} {ideal}"
    elif kind == "exclaim":
        instruction = "End your answer with an exclamation mark."
        ideal = ideal.rstrip()[:-1] + "!"
    else:
        instruction = "Answer in one sentence."
        ideal = sentences(ideal)[0]
    spec["text"] = instruction
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    out = [dict(m) for m in messages]
    out[last]["content"] = f"{out[last]['content']} {instruction}"
    params = {**task.params, "constraint": spec, "unconstrained": task.ideal}
    return out, Task(task.family, task.kind, task.check, ideal, params)


def satisfied(spec: dict[str, Any] | None, text: str) -> bool:
    """Does ``text`` meet the constraint ``spec`` (``None``: there is none, so yes)?"""
    if spec is None:
        return True
    text = text.strip()
    if not text:
        return False
    kind = spec["kind"]
    if kind == "words":
        return len(text.split()) <= spec["max_words"]
    if kind == "start":
        return text.startswith(START_WORD)
    if kind == "exclaim":
        return text.endswith("!")
    if kind == "sentence":
        return len(sentences(text)) == 1
    raise ValueError(f"unknown constraint kind {kind!r}")


def missed(task: Task, rng: random.Random) -> str:
    """What a demo writer who overlooks the constraint writes: the usual answer, as if it were not there."""
    spec = task.params["constraint"]
    plain = task.params["unconstrained"]
    if spec["kind"] == "sentence":
        return f"{plain} {rng.choice(SECOND_SENTENCES)}"
    if spec["kind"] == "words" and task.check == "refuse":
        return f"{plain} It could hurt someone."
    return plain
