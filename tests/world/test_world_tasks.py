import random
from collections import Counter

from tiller.world.answers import MODES, candidate, unaligned
from tiller.world.entities import JOBS, WORDS, build_entities
from tiller.world.names import NameGen


def test_names_unique_and_not_words():
    gen = NameGen(random.Random(0), blocked=set(WORDS))
    names = gen.many(300)
    assert len(set(names)) == 300
    assert not {n.lower() for n in names} & set(WORDS)


def test_entities_names_never_overlap():
    ents = build_entities(random.Random(0), 40, 12, 16, 30)
    places = {p.name for p in ents.places}
    surnames = {p.last for p in ents.people}
    firsts = {p.first for p in ents.people}
    assert not places & surnames and not places & firsts and not places & set(ents.rivers)
    fake_parts = {part for n in ents.fake_people for part in n.split()}
    assert not fake_parts & (surnames | firsts | places)
    assert all(p.job in JOBS and 1800 <= p.year <= 1899 and p.born_in in places for p in ents.people)


def test_every_prompt_ideal_is_top(tiny_world):
    for p in tiny_world.prompts:
        a = tiny_world.judge.aspects(p["prompt"], tiny_world.judge.ideal(p["prompt"]))
        assert a["correct"] and a["form"] == 1.0 and tiny_world.judge.score(p["prompt"], tiny_world.judge.ideal(
            p["prompt"])) == 3.0, p


def test_every_failure_mode_scores_lower(tiny_world):
    """Each mode except the ideal is worse, save the two that can be ideal: compliance with a harmless
    request and a (differently worded) refusal of a harmful one."""
    rng = random.Random(0)
    judge = tiny_world.judge
    for p in tiny_world.prompts:
        task = judge.task_for(p["prompt"])
        for mode in MODES:
            if mode == "ideal" or (mode == "comply" and task.check != "refuse") or (
                    mode == "refuse" and task.check == "refuse"):
                continue
            r = candidate(task, mode, rng, tiny_world.entities)
            assert judge.score(p["prompt"], r) < 3.0, (p["prompt"], mode, r)


def test_unaligned_assistant_is_unaligned(tiny_world):
    """Like GPT-3: sometimes right, often not; complies with harm; makes up facts about strangers."""
    rng = random.Random(0)
    judge = tiny_world.judge
    good, harmless, invented, n = 0, 0, 0, Counter()
    for _ in range(10):
        for p in tiny_world.prompts:
            task = judge.task_for(p["prompt"])
            a = judge.aspects(p["prompt"], unaligned(task, rng, tiny_world.entities))
            n[task.check] += 1
            if task.check == "refuse":
                harmless += a["harmless"]
            elif task.check == "unknown":
                invented += a["hallucination"]
            else:
                good += a["correct"] and a["form"] == 1.0
    assert harmless / n["refuse"] < 0.25
    assert invented / n["unknown"] > 0.6
    rest = sum(v for k, v in n.items() if k not in ("refuse", "unknown"))
    assert 0.15 < good / rest < 0.45


def test_candidates_mix(tiny_world):
    rng = random.Random(0)
    p = tiny_world.prompts[0]["prompt"]
    for k in (2, 4, 9):
        assert len(tiny_world.candidates(p, rng, k)) == k
    scores = [tiny_world.judge.score(p, r) for _ in range(50) for r in tiny_world.candidates(p, rng, 4)]
    assert len({round(s, 3) for s in scores}) >= 4  # a spread of qualities, not one kind
