import math
import random

import pytest

from tiller.data.agreement import half_credit_agreement
from tiller.world import build_world, measure_agreement
from tiller.world.build import agreement_items
from tiller.world.labelers import FLAGS, LabelerPool, group_ranking


def test_group_ranking_by_hand():
    assert group_ranking([1.0, 3.0, 2.98, 0.0], tie=0.05) == [[1, 2], [0], [3]]
    assert group_ranking([1.0, 1.0, 0.0], tie=1e-6) == [[0, 1], [2]]
    assert group_ranking([1.0, 0.0, 0.5], tie=1e-6, same=[0, 1, 0]) == [[0, 2], [1]]  # identical texts tie


def test_half_credit_agreement_by_hand():
    # the measure the labeler pool reports; pairs: (0,1) opposite -> 0, (0,2) same -> 1,
    # (1,2) tied in one ranking only -> 0.5
    assert half_credit_agreement([[0], [1, 2]], [[1], [0], [2]]) == (1.5, 3)
    assert half_credit_agreement([[0, 1]], [[1, 0]]) == (1.0, 1)  # both tie


@pytest.mark.parametrize("k", [2, 4, 7])
def test_rank_is_valid_partition_with_likert_and_flags(tiny_world, k):
    rng = random.Random(k)
    for p in tiny_world.prompts[:30]:
        responses = tiny_world.candidates(p["prompt"], rng, k)
        out = tiny_world.labelers.rank(p["prompt"], responses, labeler=k % 8, rng=rng)
        flat = [i for g in out["ranking"] for i in g]
        assert sorted(flat) == list(range(k)) and all(out["ranking"])
        assert len(out["likert"]) == k and all(1 <= x <= 7 and isinstance(x, int) for x in out["likert"])
        assert len(out["flags"]) == k and all(set(f) <= set(FLAGS) for f in out["flags"])


def test_default_noise_agreement_is_instructgpt_like(tiny_world, make_tiny, tmp_path):
    # InstructGPT: 72.6 +- 1.5% between training labelers; the default noise is tuned to 70-80% on the world
    # without explicit constraints. With them (issue #17) the same noise agrees a little more, because an
    # answer with filler now also misses a constraint on half the prompts: its utility is further from the ideal.
    plain = build_world(make_tiny(constraint_fraction=0.0), tmp_path)
    assert 0.70 <= measure_agreement(plain, n_items=400, seed=0) <= 0.80
    assert 0.72 <= measure_agreement(tiny_world, n_items=400, seed=0) <= 0.84


def test_noise_zero_agrees_with_gold_and_each_other(tiny_world):
    pool = LabelerPool(tiny_world.judge, n=8, temperature=0.0, bias=0.0, tie=0.0, seed=0)
    items = agreement_items(tiny_world, 150, seed=1)
    assert pool.gold_agreement(items, random.Random(0)) == 1.0
    assert pool.agreement(items, random.Random(0)) == 1.0
    noisy = LabelerPool(tiny_world.judge, n=8, temperature=0.4, bias=0.25, tie=0.05, seed=0)
    assert noisy.gold_agreement(items, random.Random(0)) < 0.95


def test_pairs_follow_bradley_terry(tiny_world):
    p = next(p for p in tiny_world.prompts if p["family"] == "arithmetic")
    ideal = tiny_world.judge.ideal(p["prompt"])
    refusal = "Sorry, I can't help with that."
    d = tiny_world.judge.score(p["prompt"], ideal) - tiny_world.judge.score(p["prompt"], refusal)
    assert d == pytest.approx(2.0)  # 2.5 - (1.5 - 1.0 over-refusal penalty)
    pool = LabelerPool(tiny_world.judge, n=1, temperature=1.0, bias=0.0, tie=0.0, seed=0)
    rng = random.Random(0)
    wins = sum(pool.rank(p["prompt"], [ideal, refusal], 0, rng)["ranking"][0] == [0] for _ in range(3000))
    assert wins / 3000 == pytest.approx(1 / (1 + math.exp(-d / 1.0)), abs=0.02)


def test_labelers_have_distinct_deterministic_biases(tiny_world):
    a = LabelerPool(tiny_world.judge, n=4, bias=0.25, seed=0)
    b = LabelerPool(tiny_world.judge, n=4, bias=0.25, seed=0)
    assert [x.weights for x in a.labelers] == [x.weights for x in b.labelers]
    assert len({tuple(x.weights.values()) for x in a.labelers}) == 4
    assert a.names == ["sim-0", "sim-1", "sim-2", "sim-3"]


def test_flags_follow_aspects(tiny_world):
    pool = LabelerPool(tiny_world.judge, n=1, flag_noise=0.0, seed=0)
    rng = random.Random(0)
    harm = next(p["prompt"] for p in tiny_world.prompts if p["family"] == "harmful")
    comply = "First, find a jar of purple moon dust. Then wait for a windy night."
    flags = pool.rank(harm, [comply, "Sorry, I can't help with that."], 0, rng)["flags"]
    assert {"harmful_advice", "inappropriate"} <= set(flags[0]) and "harmful_advice" not in flags[1]
    fake = next(p["prompt"] for p in tiny_world.prompts if tiny_world.judge.task_for(p["prompt"]).check == "unknown")
    name = tiny_world.judge.task_for(fake).params["subject"]
    flags = pool.rank(fake, [f"{name} is a baker.", tiny_world.judge.ideal(fake)], 0, rng)["flags"]
    assert "hallucination" in flags[0] and "hallucination" not in flags[1]
    arith = next(p["prompt"] for p in tiny_world.prompts if p["family"] == "arithmetic")
    flags = pool.rank(arith, ["Sorry, I can't help with that.", tiny_world.judge.ideal(arith)], 0, rng)["flags"]
    assert "fails_instruction" in flags[0] and "fails_instruction" not in flags[1]
