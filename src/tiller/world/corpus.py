"""The pretraining corpus: the world's facts in several phrasings, statements, small stories, and dialogues
with an UNALIGNED assistant (InstructGPT sec. 1: GPT-3 knows a lot but is not aligned with its users).

The base model thus learns the world and the chat format, but also learns to ramble, to be wrong, to make
up facts and to comply with harmful requests; SFT and RLHF must fix that. Dialogue prompts come from the
same templates as the prompt set, but any prompt of the held-out splits is skipped.
"""

from __future__ import annotations

import random

from tiller.chat import prompt_key, render_conversation
from tiller.world.answers import unaligned
from tiller.world.entities import OPPOSITES, WORDS, Entities, Person
from tiller.world.tasks import Family, Task, arith_task, lists_task, strings_task

BIO = (
    "{n} was born in {b} in {y}. {P} is a {j}.",
    "{n} is a {j} from {b}. {P} was born in {y}.",
    "Born in {y} in {b}, {n} worked as a {j}.",
    "The {j} {n} was born in {b}.",
    "{n} was born in {y}. {Pos} home town is {b}, where {p} is a {j}.",
    "{n}, a {j}, comes from {b}.",
)
STORY = (
    "One morning {n} the {j} walked to the river {r}. {P} sat by the water and thought about {b}.",
    "{n} was a {j}. Every day {p} went to {v} and talked with friends.",
    "When {n} was young, {p} lived in {b}. Later {p} became a {j} and was happy.",
    "{n} and {m} met at {v}. {n} is a {j} and {m} is a {j2}.",
)


def _pron(p: Person) -> dict[str, str]:
    return {"p": p.pronoun, "P": p.pronoun.capitalize(), "Pos": p.possessive.capitalize()}


def bio_doc(rng: random.Random, ents: Entities) -> str:
    people = rng.sample(ents.people, min(len(ents.people), rng.randint(1, 4)))
    return " ".join(rng.choice(BIO).format(n=p.name, b=p.born_in, y=p.year, j=p.job, **_pron(p)) for p in people)


def place_doc(rng: random.Random, ents: Entities) -> str:
    pl = rng.choice(ents.places)
    parts = [rng.choice((f"{pl.name} is a {pl.kind} on the river {pl.river}.",
                         f"The river {pl.river} runs through {pl.name}.",
                         f"{pl.name} is a small {pl.kind}. The river {pl.river} flows past it."))]
    for v in ents.venues:
        if v.place == pl.name:
            parts.append(rng.choice((f"{v.title} is in {pl.name}.", f"In {pl.name} you can find {v.name}.")))
    born = [p.name for p in ents.people if p.born_in == pl.name]
    if born:
        parts.append(f"{', '.join(born[:3])} {'was' if len(born[:3]) == 1 else 'were'} born in {pl.name}.")
    return " ".join(parts)


def story_doc(rng: random.Random, ents: Entities) -> str:
    p = rng.choice(ents.people)
    m = rng.choice(ents.people)
    pl = ents.place(p.born_in)
    return rng.choice(STORY).format(n=p.name, j=p.job, b=p.born_in, r=pl.river if pl else "", m=m.name, j2=m.job,
                                    v=rng.choice(ents.venues).name, **_pron(p))


def statement_doc(rng: random.Random, ents: Entities) -> str:
    """True statements of the skills the tasks ask for, not phrased as the prompts are."""
    out = []
    for _ in range(rng.randint(3, 8)):
        r = rng.random()
        if r < 0.4:
            out.append(arith_task(rng)[1].ideal)
        elif r < 0.6:
            _, t = lists_task(rng, rng.choice(("sort", "reverse")))
            src = ", ".join(t.params["source"])
            verb = "sorted" if t.kind == "sort" else "reversed"
            out.append(f"The list {src} {verb} is {t.ideal}")
        elif r < 0.85:
            _, t = strings_task(rng, rng.choice(("reverse", "length", "count")))
            out.append(t.ideal)
        else:
            w = rng.choice(sorted(OPPOSITES))
            out.append(f"The opposite of {w} is {OPPOSITES[w]}.")
    if rng.random() < 0.2:
        w = rng.choice(WORDS)
        out.append(f"In capital letters, {w} is {w.upper()}.")
    return " ".join(out)


def prefix_keys(messages: list[dict]) -> set[str]:
    """Keys of the conversation cut after each user turn: a multi-turn prompt contains each of them."""
    return {prompt_key(messages[: i + 1]) for i, m in enumerate(messages) if m["role"] == "user"}


def dialogue_doc(rng: random.Random, ents: Entities, make: Family, held_out: set[str]) -> str:
    """One conversation with the unaligned assistant; prompts of held-out splits are never used."""
    for _attempt in range(20):
        messages, task = make(rng, ents)
        if not prefix_keys(messages) & held_out:
            break
    else:
        return ""
    assert isinstance(task, Task)
    messages = [*messages, {"role": "assistant", "content": unaligned(task, rng, ents)}]
    if rng.random() < 0.15:
        messages = [{"role": "system", "content": "You are a helpful assistant."}, *messages]
    return render_conversation(messages)


DOC_WEIGHTS = {"bio": 0.2, "place": 0.07, "story": 0.08, "statement": 0.1, "dialogue": 0.55}


def build_corpus(rng: random.Random, ents: Entities, families: dict[str, Family], held_out: set[str],
                 n_chars: int) -> list[str]:
    """Documents until ``n_chars`` characters; dialogue families are drawn evenly."""
    makers = list(families.values())
    kinds = list(DOC_WEIGHTS)
    docs, total = [], 0
    while total < n_chars:
        kind = rng.choices(kinds, weights=[DOC_WEIGHTS[k] for k in kinds])[0]
        if kind == "bio":
            text = bio_doc(rng, ents)
        elif kind == "place":
            text = place_doc(rng, ents)
        elif kind == "story":
            text = story_doc(rng, ents)
        elif kind == "statement":
            text = statement_doc(rng, ents)
        else:
            text = dialogue_doc(rng, ents, rng.choice(makers), held_out)
        if text:
            docs.append(text)
            total += len(text)
    return docs
