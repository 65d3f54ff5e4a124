"""The gold judge reads training's outputs after the fact: RL curves judged from their answers, and the
RM's gold accuracy cached in its folder. Training itself never sees the judge (tests/test_layers.py)."""

from __future__ import annotations

import json

import pytest

from tiller.eval.curves import rl_curve
from tiller.eval.rm_accuracy import rm_gold_accuracy
from tiller.stages.ppo import ANSWERS_FILE
from tiller.stages.reward import RMConfig


@pytest.fixture(scope="module")
def world(tiny_world_dir):
    from tiller.world import load_world

    return load_world(tiny_world_dir)


def write_policy(folder, points, answers):
    folder.mkdir()
    (folder / "curve.json").write_text(json.dumps(points))
    (folder / ANSWERS_FILE).write_text("".join(json.dumps(a) + "\n" for a in answers))
    return folder


def test_rl_curve_adds_the_mean_gold_score_of_each_points_answers(tmp_path, world, tiny_world_dir):
    demos = [json.loads(x) for x in (tiny_world_dir / "demos.jsonl").read_text().splitlines()][:4]
    prompts = [d["prompt"] for d in demos]  # chat messages, as the prompt records hold them
    good = [d["response"] for d in demos]
    bad = ["I don't know."] * len(demos)
    points = [{"iteration": 0, "episodes": 0, "kl": 0.0, "rm_score": 0.1},
              {"iteration": 5, "episodes": 320, "kl": 1.5, "rm_score": 0.9},
              {"iteration": 10, "episodes": 640, "kl": 3.0, "rm_score": 1.2}]
    answers = [{"iteration": 5, "prompts": prompts, "answers": good},  # out of order: matched by iteration
               {"iteration": 0, "prompts": prompts, "answers": bad}]
    curve = rl_curve(write_policy(tmp_path / "policy", points, answers), world.judge)

    def mean_gold(texts):
        return sum(world.judge.score(p, t) for p, t in zip(prompts, texts, strict=True)) / len(texts)

    assert [c["gold_score"] for c in curve[:2]] == pytest.approx([mean_gold(bad), mean_gold(good)])
    assert curve[1]["gold_score"] > curve[0]["gold_score"]  # the demonstrations beat "I don't know."
    assert [{k: v for k, v in c.items() if k != "gold_score"} for c in curve] == points  # the rest as written
    assert "gold_score" not in curve[2]  # no answers recorded for this point: nothing to judge


def test_rl_curve_rejects_answers_that_do_not_match_their_prompts(tmp_path, world):
    points = [{"iteration": 0, "episodes": 0, "kl": 0.0, "rm_score": 0.0}]
    folder = write_policy(tmp_path / "policy", points, [{"iteration": 0, "prompts": ["a", "b"], "answers": ["x"]}])
    with pytest.raises(ValueError, match="1 answers for 2 prompts"):
        rl_curve(folder, world.judge)


def test_rm_gold_accuracy_is_read_back_from_the_rm_folder(tmp_path, world):
    rankings = [tmp_path / "rankings-r1.jsonl"]
    (tmp_path / "gold-accuracy.json").write_text(json.dumps({"rankings": [str(rankings[0])], "gold_accuracy": 0.7}))
    assert rm_gold_accuracy(world.judge, tmp_path, rankings, RMConfig()) == 0.7  # no RM needed: cached
