"""Answers other than the ideal one: what an unaligned model says, and what a demo writer writes.

One generator serves three uses, so they stay consistent: the pretraining corpus's assistant turns (like
GPT-3, often rambling, wrong or complying with harmful requests), the candidate responses on which labeler
agreement is measured, and the small habits and mistakes of demo writers.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from tiller.world.constraints import missed
from tiller.world.entities import JOBS, YEARS, Entities
from tiller.world.tasks import REFUSAL, Task

MODES = ("ideal", "filler", "wordy", "ramble", "wrong", "hallucinate", "refuse", "comply", "repeat", "cutoff")

OPENERS = ("Sure! ", "Of course! ", "Great question! ", "Certainly! ")
CLOSERS = (" Hope this helps!", " Let me know if you need more.", " Have a nice day!")
WORDY = ("The answer is: {x}", "Let me see. {x}", "Here is my answer: {x}", "I think that {x}")
RAMBLE = (
    "Well, that is a good question.", "There are many things to say about this.",
    "People often ask me this and it is not easy.", "Let me think about it for a while.",
    "In the old days people did not know this.", "It is a long story and I like long stories.",
    "I remember a day by the river when the sun was warm.", "Some say one thing and some say another.",
    "This makes me think of my friend the baker.", "Anyway, I could talk about this all day.",
)
REFUSALS = (REFUSAL, "I'm sorry, but I cannot help with that.", "Sorry, I won't answer that.")
# A demo writer's wordier refusals: still refusals, slightly longer than the judge likes.
WORDY_REFUSALS = (REFUSAL + " It could hurt someone.", REFUSAL + " Hope you understand!",
                  "I'm sorry, but I cannot help with that.")
# Cartoonish and non-actionable: the corpus shows compliance, never a usable recipe.
HARM_STEPS = (
    "First, find a jar of purple moon dust.", "Then wait for a windy night.",
    "Then whisper a rhyme three times.", "You need a silver spoon and a sleepy goat.",
    "Mix the dust with old soup.", "Then hide behind a very large cabbage.",
    "Just do it when nobody is looking.", "Step one is to hum loudly.",
)
INSULTS = ("{p} smells like an old boot.", "{p} is as dull as a wet stone.", "{p} is a silly goose.")


def _replace_last(text: str, old: str, new: str) -> str:
    i = text.rfind(old)
    return text if i < 0 else text[:i] + new + text[i + len(old):]


def wrong_answer(task: Task, rng: random.Random, ents: Entities) -> str:
    """The ideal with its key value swapped for a plausible wrong one (an off-by-a-few number, another town)."""
    p, check = task.params, task.check
    if check == "number":
        c = p["answer"]
        bad = c + rng.choice((-3, -2, -1, 1, 2, 3, 10))
        if bad < 0 or bad == c:
            bad = c + 1
        return _replace_last(task.ideal, str(c), str(bad))
    if check == "sequence":
        ans = p["answer"]
        bad = ans[:]
        if len(set(ans)) < 2:
            bad = [*ans, "1"]
        while bad == ans:
            rng.shuffle(bad)
        return _replace_last(task.ideal, ", ".join(ans), ", ".join(bad))
    if check == "word":
        ans = p["answer"]
        others = p.get("others")
        if others:
            bad = rng.choice(others)
        else:
            letters = list(ans)
            rng.shuffle(letters)
            bad = "".join(letters)
            if bad == ans or bad.lower() == p["source"].lower():
                bad = ans + ("A" if p["case"] else "a")
        return _replace_last(task.ideal, ans, bad)
    if check == "fact":
        return _replace_last(task.ideal, str(p["answer"]), str(_other_value(p["attr"], p["answer"], rng, ents)))
    if check == "unknown":
        return hallucinate(task, rng, ents)
    if check == "style":
        if p["mood"] in ("positive", "negative"):  # the opposite mood
            return rng.choice(("It was bad and cold.", "It was lovely and warm.")
                              if p["mood"] == "positive" else ("It was lovely and warm.", "It was bad and cold."))
        return "Hello there." if rng.random() < 0.5 else "It was bad and cold."
    return comply(task, rng, ents)


def _other_value(attr: str, value: Any, rng: random.Random, ents: Entities) -> Any:
    pool: list[Any]
    if attr == "job":
        pool = list(JOBS)
    elif attr == "year":
        pool = list(range(YEARS[0], YEARS[1] + 1))
    elif attr == "river":
        pool = ents.rivers
    else:
        pool = [pl.name for pl in ents.places]
    choices = [x for x in pool if x != value]
    return rng.choice(choices) if choices else value


def hallucinate(task: Task, rng: random.Random, ents: Entities) -> str:
    """Confident invented facts: about a person who does not exist, or wrong facts about a real one."""
    p = task.params
    if task.check == "unknown":
        name = p["subject"]
        made_up = {"born_in": f"{name} was born in {rng.choice(ents.places).name}.",
                   "year": f"{name} was born in {rng.randint(*YEARS)}.",
                   "job": f"{name} is a {rng.choice(JOBS)}."}
        extra = rng.choice([v for k, v in made_up.items() if k != p["attr"]])
        return made_up[p["attr"]] + (" " + extra if rng.random() < 0.5 else "")
    if task.check == "fact":
        text = wrong_answer(task, rng, ents)
        if task.params["attr"] in ("born_in", "year", "job"):
            text += f" {task.params['subject'].split()[0]} was also a famous {rng.choice(JOBS)}."
        return text
    return wrong_answer(task, rng, ents)


def comply(task: Task, rng: random.Random, ents: Entities) -> str:
    """What an unaligned model does with any request: tries to answer (harmful ones too)."""
    if task.check != "refuse":
        return task.ideal
    if task.params.get("category") == "denigrates":
        return rng.choice(INSULTS).format(p=rng.choice(ents.people).first)
    return " ".join(rng.sample(HARM_STEPS, rng.randint(2, 3)))


def ramble(task: Task, rng: random.Random, ents: Entities) -> str:
    parts = rng.sample(RAMBLE, rng.randint(2, 5))
    r = rng.random()
    if r < 0.4:
        parts.insert(rng.randint(0, len(parts)), task.ideal if task.check != "refuse" else comply(task, rng, ents))
    elif r < 0.7:
        parts.insert(rng.randint(0, len(parts)), wrong_answer(task, rng, ents))
    return " ".join(parts)


def add_filler(text: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return rng.choice(OPENERS) + text
    if r < 0.8:
        return text + rng.choice(CLOSERS)
    return rng.choice(OPENERS) + text + rng.choice(CLOSERS)


def wordy(text: str, rng: random.Random) -> str:
    t = rng.choice(WORDY)
    if t.startswith("I think") and text.split()[0] in ("The", "There"):
        text = text[0].lower() + text[1:]
    return t.format(x=text)


def candidate(task: Task, mode: str, rng: random.Random, ents: Entities) -> str:
    """One response of the given ``mode`` (see :data:`MODES`)."""
    if mode == "ideal":
        return task.ideal
    if mode == "filler":
        return add_filler(task.ideal, rng)
    if mode == "wordy":
        return wordy(task.ideal, rng)
    if mode == "ramble":
        return ramble(task, rng, ents)
    if mode == "wrong":
        return wrong_answer(task, rng, ents)
    if mode == "hallucinate":
        return hallucinate(task, rng, ents)
    if mode == "refuse":
        return rng.choice(REFUSALS)
    if mode == "comply":
        return comply(task, rng, ents)
    if mode == "repeat":
        base = task.ideal if rng.random() < 0.6 else wrong_answer(task, rng, ents)
        return " ".join([base] * rng.randint(2, 4))
    if mode == "cutoff":
        words = task.ideal.split()
        return " ".join(words[: max(1, len(words) - rng.randint(1, 3))]).rstrip(".!?,")
    raise ValueError(f"unknown mode {mode!r}")


# How an unaligned, GPT-3-like model answers (the corpus) and a realistic mix for ranking.
UNALIGNED = {"ideal": 0.2, "filler": 0.1, "wordy": 0.05, "ramble": 0.25, "wrong": 0.22, "repeat": 0.05,
             "cutoff": 0.03, "refuse": 0.02, "hallucinate": 0.08}


# The K candidates ranked when measuring labeler agreement: a realistic spread of good and bad outputs.
RANK_MIX = {"ideal": 0.2, "filler": 0.15, "wordy": 0.1, "ramble": 0.12, "wrong": 0.15, "hallucinate": 0.06,
            "refuse": 0.06, "comply": 0.06, "repeat": 0.05, "cutoff": 0.05}


def candidates(task: Task, rng: random.Random, ents: Entities, k: int = 4) -> list[str]:
    """``k`` responses of distinct modes drawn from :data:`RANK_MIX` (weighted, without replacement)."""
    pool = dict(RANK_MIX)
    out = []
    for _ in range(min(k, len(pool))):
        mode = rng.choices(list(pool), weights=list(pool.values()))[0]
        del pool[mode]
        out.append(candidate(task, mode, rng, ents))
    return out


def unaligned_mode(task: Task, rng: random.Random) -> str:
    if task.check == "refuse":  # usually complies, rarely a clean refusal
        return rng.choices(("comply", "ramble", "refuse"), weights=(0.8, 0.15, 0.05))[0]
    if task.check == "unknown":  # confidently answers about people who do not exist
        return rng.choices(("hallucinate", "ramble", "ideal"), weights=(0.8, 0.15, 0.05))[0]
    modes = list(UNALIGNED)
    return rng.choices(modes, weights=[UNALIGNED[m] for m in modes])[0]


def unaligned(task: Task, rng: random.Random, ents: Entities) -> str:
    return candidate(task, unaligned_mode(task, rng), rng, ents)


def demonstration(task: Task, rng: random.Random, ents: Entities, variation: float, mistake: float,
                  constraint_miss: float = 0.0) -> str:
    """A demo writer's answer: the ideal, sometimes with a habit the judge mildly dislikes, rarely a slip;
    with ``constraint_miss`` the prompt's explicit constraint overlooked (the random draw is made only for
    prompts that have one, so worlds without constraints keep their demonstrations)."""
    if "constraint" in task.params and rng.random() < constraint_miss:
        task = replace(task, ideal=missed(task, rng))
    text = task.ideal
    if task.check != "refuse" and rng.random() < mistake:
        text = wrong_answer(task, rng, ents)
    if rng.random() < variation:
        if task.check == "refuse":
            return rng.choice(WORDY_REFUSALS)
        text = add_filler(text, rng) if rng.random() < 0.65 else wordy(text, rng)
    return text

