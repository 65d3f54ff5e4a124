"""InstructGPT's metadata per policy (fig. 4, app. B) and win rates restricted to each aspect (issue #17),
on hand-made aspect dicts with every number worked out by hand below."""

from __future__ import annotations

import math

import pytest

from tiller.eval.evaluate import (
    EvalResult,
    PolicyAnswers,
    aspect_win_rates,
    bucket_win_rates,
    evaluate_policy,
    judge_all,
    outcome_summary,
    policy_metadata,
    print_eval,
    wilson,
    win_rates,
)
from tiller.eval.evaluate import test_prompts as held_out_prompts  # not test_*: pytest would collect it
from tiller.world.judge import METADATA

approx = pytest.approx


def asp(**over):
    """A judged answer as ``GoldJudge.aspects`` returns it: a correct, well-formed arithmetic answer unless
    ``over`` says otherwise."""
    return {"helpful": 1.0, "truthful": True, "harmless": True, "form": 1.0, "constraint": True,
            "has_constraint": False, "refusal": False, "hallucination": False, "off_topic": False, "correct": True,
            "check": "number", "family": "arithmetic", "category": ""} | over


# Five answers. Gold score = helpful + 0.5 (truthful + harmless + form + constraint) - penalties (judge.WEIGHTS,
# PENALTY); Likert = 1 + round(6 (score + 1.5) / 4.5).
ANSWERS = [
    asp(has_constraint=True),  # A: 1 + 2 = 3.0, Likert 7
    asp(has_constraint=True, constraint=False, helpful=0.0, correct=False, form=0.5),  # B: 0 + 1.25 = 1.25, Likert 5
    asp(has_constraint=True, check="fact", family="facts", helpful=0.25, truthful=False,  # C: 0.25 + 1.5 - 1 = 0.75,
        hallucination=True, correct=False),  # Likert 4
    asp(has_constraint=True, check="refuse", family="harmful", helpful=0.0, harmless=False, form=0.8,  # D: 0 + 1.4
        correct=False),  # - 1.5 = -0.1, Likert 3
    asp(family="style", check="word", helpful=0.0, refusal=True, correct=False),  # E: 2.0 - 1 (over-refusal) = 1.0, Likert 4
]


def test_wilson_by_hand():
    # 3 of 4, z = 1.96: z²/n = 0.9604, centre = (0.75 + 0.4802) / 1.9604 = 0.62753,
    # half = 1.96 / 1.9604 * sqrt(0.75 * 0.25 / 4 + 3.8416 / 64) = 0.99980 * 0.326956 = 0.326889
    assert wilson(3, 4) == approx((0.75, 0.30064, 0.95442), abs=1e-5)
    # 0 of 5: the interval is not empty, it reaches z² / (n + z²) = 3.8416 / 8.8416 = 0.434491
    assert wilson(0, 5) == approx((0.0, 0.0, 0.434491), abs=1e-6)
    # 1 of 1: lo = 1 / (1 + z²) = 0.206543, hi = 1
    assert wilson(1, 1) == approx((1.0, 0.206543, 1.0), abs=1e-6)
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_policy_metadata_by_hand():
    out = policy_metadata(ANSWERS)
    rates = out["metadata"]
    assert list(rates) == list(METADATA)  # every item applies to some answer here
    # follows_constraints: A-D have a constraint, A, C, D meet it: 3 of 4 (E, without one, is left out)
    assert rates["follows_constraints"] == approx({"value": 0.75, "lo": 0.30064, "hi": 0.95442, "n": 4}, abs=1e-5)
    # fails_instruction: helpful < 0.5 for B, C, D, E: 4 of 5; centre = (0.8 + 0.38416) / 1.76832 = 0.66965,
    # half = 1.96 / 1.76832 * sqrt(0.16 / 5 + 3.8416 / 100) = 0.294124
    assert rates["fails_instruction"] == approx({"value": 0.8, "lo": 0.37553, "hi": 0.96377, "n": 5}, abs=1e-5)
    # hallucination: only C is a fact prompt, and it hallucinates: 1 of 1
    assert rates["hallucination"] == approx({"value": 1.0, "lo": 0.206543, "hi": 1.0, "n": 1}, abs=1e-6)
    # harmful: only D is a harmful prompt, and it complies: 1 of 1
    assert rates["harmful"] == approx({"value": 1.0, "lo": 0.206543, "hi": 1.0, "n": 1}, abs=1e-6)
    # over_refusal: the four harmless prompts (A, B, C, E), E refuses: 1 of 4, the mirror of 3 of 4
    assert rates["over_refusal"] == approx({"value": 0.25, "lo": 0.04558, "hi": 0.69936, "n": 4}, abs=1e-5)
    assert rates["off_topic"] == approx({"value": 0.0, "lo": 0.0, "hi": 0.434491, "n": 5}, abs=1e-6)

    means = out["aspect_means"]
    assert list(means) == ["helpful", "truthful", "harmless", "form", "score", "likert"]
    # helpful [1, 0, 0.25, 0, 0]: mean 0.25, squared deviations sum to 0.75, sd = sqrt(0.75 / 4) = 0.43301,
    # half = 1.96 * 0.43301 / sqrt(5) = 0.37955; the lower end is clipped at 0
    assert means["helpful"] == approx({"value": 0.25, "lo": 0.0, "hi": 0.62955, "n": 5}, abs=1e-5)
    assert means["truthful"]["value"] == 0.8 and means["harmless"]["value"] == 0.8
    assert means["form"]["value"] == approx((1 + 0.5 + 1 + 0.8 + 1) / 5)
    # gold score [3.0, 1.25, 0.75, -0.1, 1.0]: mean 1.18; its interval is not clipped to [0, 1]
    # (squared deviations: 3.3124 + 0.0049 + 0.1849 + 1.6384 + 0.0324 = 5.173, sd = 1.137211, half = 0.996810)
    assert means["score"] == approx({"value": 1.18, "lo": 0.18319, "hi": 2.17681, "n": 5}, abs=1e-5)
    # Likert [7, 5, 4, 3, 4]: mean 4.6, squared deviations 5.76 + 0.16 + 0.36 + 2.56 + 0.36 = 9.2,
    # sd = sqrt(2.3) = 1.516575, half = 1.96 * 1.516575 / sqrt(5) = 1.329337
    assert means["likert"] == approx({"value": 4.6, "lo": 3.270663, "hi": 5.929337, "n": 5}, abs=1e-6)


def test_items_that_apply_to_no_answer_are_left_out():
    out = policy_metadata([asp(), asp(helpful=0.0, correct=False)])  # arithmetic, no constraints
    assert set(out["metadata"]) == {"fails_instruction", "over_refusal", "off_topic"}
    assert out["metadata"]["fails_instruction"]["value"] == 0.5
    assert policy_metadata([]) == {"metadata": {}, "aspect_means": {}}


# Four prompts; the first answer against the second, aspect by aspect (W win, T tie, L loss):
#         helpful      truthful   harmless   form          constraint
# 1       1 > 0.5 W    T = T  T   T = T  T   1 > 0.85  W   has one: met > missed W
# 2       0.5 < 1 L    F < T  L   T = T  T   0.7 = 0.7 T   has one: missed = missed T
# 3       1 = 1   T    T > F  W   T > F  W   0.85 < 1  L   none (left out)
# 4       1 > 0   W    T = T  T   T = T  T   1 > 0.5   W   none (left out)
XS = [asp(helpful=1.0, form=1.0, has_constraint=True), asp(helpful=0.5, truthful=False, form=0.7, has_constraint=True,
      constraint=False), asp(form=0.85), asp(form=1.0)]
YS = [asp(helpful=0.5, form=0.85, has_constraint=True, constraint=False), asp(helpful=1.0, form=0.7,
      has_constraint=True, constraint=False), asp(truthful=False, harmless=False, form=1.0), asp(helpful=0.0, form=0.5)]


def test_aspect_win_rates_by_hand():
    out = aspect_win_rates(XS, YS)
    assert list(out) == ["helpful", "truthful", "harmless", "form", "constraint"]
    # helpful [1, 0, 0.5, 1]: 0.625; squared deviations 0.140625 + 0.390625 + 0.015625 + 0.140625 = 0.6875,
    # sd = sqrt(0.6875 / 3) = 0.478714, half = 1.96 * 0.478714 / 2 = 0.469140; the upper end is clipped at 1
    assert out["helpful"] == approx({"rate": 0.625, "lo": 0.15586, "hi": 1.0, "n": 4, "ties": 0.25, "wins": 0.5,
                                     "losses": 0.25}, abs=1e-5)
    assert out["truthful"] | {"lo": 0, "hi": 0} == {"rate": 0.5, "lo": 0, "hi": 0, "n": 4, "ties": 0.5,
                                                    "wins": 0.25, "losses": 0.25}
    assert (out["harmless"]["rate"], out["harmless"]["ties"]) == (0.625, 0.75)
    assert (out["form"]["rate"], out["form"]["ties"], out["form"]["losses"]) == (0.625, 0.25, 0.25)
    # constraint: prompts 1 and 2 only, [1, 0.5]: 0.75; sd = sqrt(0.125) = 0.353553, half = 1.96 * 0.353553 /
    # sqrt(2) = 0.49
    assert out["constraint"] == approx({"rate": 0.75, "lo": 0.26, "hi": 1.0, "n": 2, "ties": 0.5, "wins": 0.5,
                                        "losses": 0.0}, abs=1e-9)
    assert "constraint" not in aspect_win_rates(XS[2:], YS[2:])  # no prompt with a constraint: no column


def test_win_tie_loss_shares_and_constraint_buckets():
    # [1, 0.5, 0.5, 0, 1]: 0.6; squared deviations 0.16 + 0.01 + 0.01 + 0.36 + 0.16 = 0.7, sd = sqrt(0.175) =
    # 0.418330, half = 1.96 * 0.418330 / sqrt(5) = 0.366682
    assert outcome_summary([1.0, 0.5, 0.5, 0.0, 1.0]) == approx(
        {"rate": 0.6, "lo": 0.233318, "hi": 0.966682, "n": 5, "ties": 0.4, "wins": 0.4, "losses": 0.2}, abs=1e-6)
    # families a, a, b, b; constraint on the first of each; outcomes 1, 0.5, 0, 1
    out = bucket_win_rates(["a", "a", "b", "b"], [True, False, True, False], [1.0, 0.5, 0.0, 1.0])
    assert list(out) == ["a", "b", "with constraint", "without constraint", "overall"]
    assert [out[k]["rate"] for k in out] == [0.75, 0.5, 0.5, 0.75, 0.625]
    assert [out[k]["n"] for k in out] == [2, 2, 2, 2, 4]
    assert (out["with constraint"]["wins"], out["with constraint"]["ties"], out["with constraint"]["losses"]) == (0.5, 0, 0.5)
    assert (out["overall"]["wins"], out["overall"]["ties"], out["overall"]["losses"]) == (0.5, 0.25, 0.25)
    # a world without constraints has only the "without constraint" bucket
    assert "with constraint" not in bucket_win_rates(["a"], [False], [1.0])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small world with the default share of explicit constraints (the shared tiny test world has none)."""
    from tiller.world import WorldConfig, build_world

    return build_world(WorldConfig(n_train_prompts=70, n_valid_prompts=14, n_test_per_family=6, n_demos=40,
                                   corpus_chars=5_000, agreement_items=0), tmp_path_factory.mktemp("world"))


def test_on_the_world_ideal_answers_against_a_shrug(world, tmp_path):
    """The real judge's aspects feed the same functions: the world's ideal answers meet every constraint and
    comply with no harmful request, and beat "I don't know." on helpfulness."""
    prompts, families = held_out_prompts(world, 6, seed=0)
    ideal = PolicyAnswers("ideal", prompts, families, [world.judge.ideal(p) for p in prompts])
    shrug = PolicyAnswers("shrug", prompts, families, ["I don't know."] * len(prompts))
    meta = policy_metadata(judge_all(world.judge, ideal))["metadata"]
    assert meta["follows_constraints"]["value"] == 1.0 and meta["harmful"]["value"] == 0.0
    assert meta["follows_constraints"]["n"] + sum(not world.judge.aspects(p, "")["has_constraint"] for p in prompts) \
        == len(prompts)
    wins = win_rates(world.judge, ideal, shrug)
    assert wins["with constraint"]["n"] + wins["without constraint"]["n"] == wins["overall"]["n"] == len(prompts)
    assert wins["overall"]["wins"] + wins["overall"]["ties"] + wins["overall"]["losses"] == approx(1.0)
    aspects = aspect_win_rates(judge_all(world.judge, ideal), judge_all(world.judge, shrug))
    assert aspects["helpful"]["rate"] > 0.5 and aspects["constraint"]["n"] == meta["follows_constraints"]["n"]

    # `tiller eval` computes the same from the same answers (given in the cache: no model is loaded; tmp_path
    # has no corpus-valid.jsonl, so no pretraining loss either)
    res = evaluate_policy("ideal", tmp_path, baseline="shrug", n_per_family=6, seed=0, world=world,
                          cache={"ideal": ideal, "shrug": shrug})
    assert res.metadata == meta and res.win_rate == wins and res.aspect_win_rate == aspects
    assert res.baseline_metadata == policy_metadata(judge_all(world.judge, shrug))["metadata"]
    assert res.aspect_means["likert"]["value"] > res.baseline_aspect_means["likert"]["value"]


def test_print_eval_shows_metadata_and_aspect_win_rates(capsys):
    meta = policy_metadata(ANSWERS)
    base = policy_metadata(ANSWERS[:2])
    res = EvalResult("runs/x/policy-r1", per_family={"arithmetic": {"score": 2.0, "correct": 0.5}},
                     overall={"score": 1.18, "correct": 0.2}, baseline="runs/x/sft",
                     win_rate=bucket_win_rates(["a", "a", "b", "b"], [True, False, True, False], [1.0, 0.5, 0.0, 1.0]),
                     metadata=meta["metadata"], aspect_means=meta["aspect_means"],
                     baseline_metadata=base["metadata"], baseline_aspect_means=base["aspect_means"],
                     aspect_win_rate=aspect_win_rates(XS, YS))
    print_eval(res)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("follows_constraints"))
    # the policy 3 of 4; the baseline (A, B) 1 of 2: Wilson centre 0.5, half = 1.96 / 2.9208 * sqrt(0.125 + 0.2401)
    # = 0.405471
    assert "75.0% [30.1%, 95.4%] n=4" in line and "50.0% [9.5%, 90.5%] n=2" in line
    assert next(x for x in out.splitlines() if x.startswith("hallucination")).split()[-1] == "–"  # baseline: none
    assert "likert" in out and "4.60 [3.27, 5.93] n=5" in out
    assert "prompts with constraint" in out and "gold vs baseline: wins 50.0%, ties 25.0%, losses 25.0%" in out
    assert "constraint          75.0% [26.0%, 100.0%] n=2" in out
    assert set(res.to_json()) >= {"win_rate", "per_family", "overall", "metadata", "aspect_means",
                                  "baseline_metadata", "baseline_aspect_means", "aspect_win_rate"}
