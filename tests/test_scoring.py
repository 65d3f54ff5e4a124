"""Combining several reward sources (Sparrow-style sum / penalty / gate), on hand-worked numbers."""

from __future__ import annotations

import pytest
import torch

from tiller.config import ConfigError, load_config
from tiller.scoring import CompositeReward, FunctionScorer, RewardSource, combine


def src(name: str, **kw) -> RewardSource:
    return RewardSource(kind="python", path="x:y", name=name, **kw)


def test_weighted_sum():
    parts = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([2.0, -2.0, 0.0])}
    out = combine(parts, [src("a"), src("b", weight=0.5)])
    assert out.tolist() == [2.0, 1.0, 3.0]  # 1+1, 2-1, 3+0


def test_penalty_subtracts_only_below_threshold():
    parts = {"a": torch.tensor([1.0, 1.0, 1.0]), "harm": torch.tensor([1.0, 0.0, -1.0])}
    out = combine(parts, [src("a"), src("harm", role="penalty", weight=2.0, threshold=0.5)])
    # 2 * min(0, s - 0.5) = [0, -1, -3]
    assert out.tolist() == [1.0, 0.0, -2.0]


def test_gate_replaces_the_whole_reward_strictly_below_threshold():
    parts = {"a": torch.tensor([4.0, 4.0, 4.0]), "safe": torch.tensor([1.0, -0.5, 0.0])}
    out = combine(parts, [src("a"), src("safe", role="gate", threshold=0.0, gate_reward=-5.0)])
    assert out.tolist() == [4.0, -5.0, 4.0]  # 0.0 is at the threshold, not below: kept


def test_all_roles_together():
    parts = {"a": torch.tensor([1.0, 2.0]), "p": torch.tensor([-1.0, 3.0]), "g": torch.tensor([0.5, 0.5])}
    out = combine(parts, [src("a", weight=2.0), src("p", role="penalty", weight=0.5),
                          src("g", role="gate", threshold=1.0, gate_reward=-1.0)])
    assert out.tolist() == [-1.0, -1.0]  # both gated
    parts.pop("g")
    out = combine(parts, [src("a", weight=2.0), src("p", role="penalty", weight=0.5)])
    assert out.tolist() == [1.5, 4.0]  # 2*1 + 0.5*(-1), 2*2 + 0


def test_each_gate_gives_its_own_reward():
    parts = {"a": torch.tensor([4.0, 4.0]), "g1": torch.tensor([-1.0, 1.0]), "g2": torch.tensor([1.0, -1.0])}
    out = combine(parts, [src("a"), src("g1", role="gate", gate_reward=-5.0), src("g2", role="gate", gate_reward=-1.0)])
    assert out.tolist() == [-5.0, -1.0]


def double_len(prompts, responses):
    return [2 * len(r) for r in responses]


def test_function_scorer_and_composite():
    assert FunctionScorer(f"{__name__}:double_len").score(["p", "q"], ["ab", "c"]) == [4.0, 2.0]
    with pytest.raises(ConfigError, match="cannot be imported"):
        FunctionScorer("no_such_module_xyz:f")
    comp = CompositeReward([RewardSource(kind="python", path=f"{__name__}:double_len", weight=0.5)])
    total, parts = comp.score(["p"], ["abc"])
    assert total.tolist() == [3.0] and parts == {"python0": pytest.approx(torch.tensor([6.0]))}


def test_reward_source_needs_a_path():
    with pytest.raises(ConfigError, match="needs a path"):
        load_config(RewardSource, None, ["kind=rm"])
    with pytest.raises(ConfigError, match="'mean' is not one of"):
        load_config(RewardSource, None, ["path=x", "role=mean"])
