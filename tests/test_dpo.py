"""DPO (issue #14): the losses against numbers worked by hand, and the stage on the tiny world (the implicit
reward margin of the training pairs rises, an interrupted run resumes to the same weights, the CLI runs)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from test_ppo import length_rankings  # pytest puts tests/ on the path
from tiller.data import write_jsonl
from tiller.losses import dpo_loss, pair_preferences, plackett_luce_loss, ranks_from_groups
from tiller.runs import MANIFEST
from tiller.tracking import read_metrics


def ls(x: float) -> float:
    """log sigmoid(x) = -log(1 + e^-x), written out so the tests do not reuse the code under test."""
    return -math.log1p(math.exp(-x))


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def prefs_of(rankings: list[list[list[int]]], k: int) -> torch.Tensor:
    return t([pair_preferences(rankings, k)])


# --- the losses -------------------------------------------------------------------------------------------


def test_dpo_two_answers_by_hand():
    # pi_w = -5, ref_w = -7, pi_l = -6, ref_l = -5, beta = 0.5:
    # r_w = 0.5 * (-5 + 7) = 1, r_l = 0.5 * (-6 + 5) = -0.5, loss = -log sigmoid(1.5) = log(1 + e^-1.5) = 0.201413
    # (with the reference's sign flipped it would be -log sigmoid(-1.5) = 1.701; without beta, 0.049)
    loss, st = dpo_loss(t([[-5.0, -6.0]]), t([[-7.0, -5.0]]), prefs_of([[[0], [1]]], 2),
                        torch.ones(1, 2, dtype=torch.bool), beta=0.5)
    assert float(loss) == pytest.approx(0.201413, abs=1e-6) and -ls(1.5) == pytest.approx(0.201413, abs=1e-6)
    assert float(st["chosen"]) == pytest.approx(1.0) and float(st["rejected"]) == pytest.approx(-0.5)
    assert float(st["margin"]) == pytest.approx(1.5) and float(st["accuracy"]) == 1.0


def test_dpo_k3_ranking_with_a_tie_by_hand():
    # ranking [[0], [1, 2]]: pairs 0>1 and 0>2; the tie 1~2 forms no pair; divided by C(3,2) = 3 as the RM's loss.
    # r = beta * (pi - ref) = 0.1 * [10, 0, -10] = [1, 0, -1]:
    # loss = -(log sigmoid(1) + log sigmoid(2)) / 3 = (0.313262 + 0.126928) / 3 = 0.146730
    # (dividing by the 2 pairs left instead would give 0.220)
    pi, ref = t([[-10.0, -20.0, -30.0]]), t([[-20.0, -20.0, -20.0]])
    loss, st = dpo_loss(pi, ref, prefs_of([[[0], [1, 2]]], 3), torch.ones(1, 3, dtype=torch.bool), beta=0.1)
    assert float(loss) == pytest.approx(0.146730, abs=1e-6) and -(ls(1) + ls(2)) / 3 == pytest.approx(0.146730, abs=1e-6)
    assert float(st["n_pairs"]) == 2
    # chosen: answer 0 in both pairs (r = 1); rejected: answers 1 and 2 (r = 0, -1); margin 1.5
    assert float(st["chosen"]) == pytest.approx(1.0) and float(st["rejected"]) == pytest.approx(-0.5)


def test_dpo_two_labelers_disagreeing_merge_like_the_rm():
    # labeler A: 0 > 1, labeler B: 1 > 0; r = [1, 0] (beta 1): the pair's targets are 0.5 each way,
    # loss = -(0.5 log sigmoid(1) + 0.5 log sigmoid(-1)) = 0.5 * (0.313262 + 1.313262) = 0.813262
    pi, ref, valid = t([[1.0, 0.0]]), t([[0.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool)
    loss, st = dpo_loss(pi, ref, prefs_of([[[0], [1]], [[1], [0]]], 2), valid, beta=1.0)
    assert float(loss) == pytest.approx(0.813262, abs=1e-6)
    assert float(st["accuracy"]) == pytest.approx(0.5)  # right against one labeler, wrong against the other
    # merged and weighted by its 2 rankings, the item counts twice beside a 1-ranking item (r = [2, 0], 0 > 1):
    # (2 * 0.813262 + 1 * -log sigmoid(2)) / 3 = (1.626523 + 0.126928) / 3 = 0.584484, the loss of 3 separate rows
    pi2, ref2 = t([[1.0, 0.0], [2.0, 0.0]]), t([[0.0, 0.0], [0.0, 0.0]])
    prefs2 = torch.cat([prefs_of([[[0], [1]], [[1], [0]]], 2), prefs_of([[[0], [1]]], 2)])
    merged, _ = dpo_loss(pi2, ref2, prefs2, torch.ones(2, 2, dtype=torch.bool), 1.0, weights=t([2.0, 1.0]))
    rows = torch.cat([prefs_of([[[0], [1]]], 2), prefs_of([[[1], [0]]], 2), prefs_of([[[0], [1]]], 2)])
    separate, _ = dpo_loss(pi2[[0, 0, 1]], ref2[[0, 0, 1]], rows, torch.ones(3, 2, dtype=torch.bool), 1.0)
    assert float(merged) == pytest.approx(0.584484, abs=1e-6) and float(separate) == pytest.approx(float(merged))


def test_cdpo_label_smoothing_by_hand():
    # eps = 0.1, margin 1.5: -(0.9 log sigmoid(1.5) + 0.1 log sigmoid(-1.5)) = 0.9 * 0.201413 + 0.1 * 1.701413 = 0.351413
    loss, _ = dpo_loss(t([[-5.0, -6.0]]), t([[-7.0, -5.0]]), prefs_of([[[0], [1]]], 2),
                       torch.ones(1, 2, dtype=torch.bool), beta=0.5, label_smoothing=0.1)
    assert float(loss) == pytest.approx(0.351413, abs=1e-6)


def ranks(groups: list[list[int]], k: int) -> torch.Tensor:
    return torch.tensor([ranks_from_groups(groups, k)])


def test_plackett_luce_k3_by_hand():
    # r = [2, 1, 0] (beta 1, ref 0). Ranking 0 > 1 > 2:
    # -[(2 - log(e^2 + e^1 + e^0)) + (1 - log(e^1 + e^0)) + 0] = (2.407606 - 2) + (1.313262 - 1) = 0.720868
    pi, ref, valid = t([[2.0, 1.0, 0.0]]), torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.bool)
    loss, st = plackett_luce_loss(pi, ref, ranks([[0], [1], [2]], 3), valid, beta=1.0)
    assert float(loss) == pytest.approx(0.720868, abs=1e-6)
    assert float(st["accuracy"]) == 1.0 and float(st["n_pairs"]) == 3
    # ties unordered within a group, never in each other's denominator:
    # 0 > {1, 2}: only 0 is picked against the others, -(2 - 2.407606) = 0.407606
    low, _ = plackett_luce_loss(pi, ref, ranks([[0], [1, 2]], 3), valid, beta=1.0)
    assert float(low) == pytest.approx(0.407606, abs=1e-6)
    # {0, 1} > 2: 0 against {0, 2} and 1 against {1, 2}: -(log sigmoid(2) + log sigmoid(1)) = 0.440190
    top, _ = plackett_luce_loss(pi, ref, ranks([[0, 1], [2]], 3), valid, beta=1.0)
    assert float(top) == pytest.approx(0.440190, abs=1e-6) and -(ls(2) + ls(1)) == pytest.approx(0.440190, abs=1e-6)
    # all tied: nothing to learn
    tied, _ = plackett_luce_loss(pi, ref, ranks([[0, 1, 2]], 3), valid, beta=1.0)
    assert float(tied) == 0.0


def test_plackett_luce_is_dpo_for_two_answers_and_ignores_padding():
    pi, ref = t([[-5.0, -6.0, float("nan")]]), t([[-7.0, -5.0, 0.0]])
    valid = torch.tensor([[True, True, False]])
    pl, _ = plackett_luce_loss(pi, ref, torch.tensor([[0, 1, 9]]), valid, beta=0.5)
    pairs, _ = dpo_loss(pi[:, :2], ref[:, :2], prefs_of([[[0], [1]]], 2), valid[:, :2], beta=0.5)
    assert float(pl) == pytest.approx(float(pairs)) and float(pairs) == pytest.approx(-ls(1.5))


def test_dpo_gradient_pushes_the_chosen_answer_up():
    pi = t([[-5.0, -6.0]]).requires_grad_()
    loss, _ = dpo_loss(pi, t([[-7.0, -5.0]]), prefs_of([[[0], [1]]], 2), torch.ones(1, 2, dtype=torch.bool), 0.5)
    loss.backward()
    # d loss / d pi_w = -beta * sigmoid(-1.5) = -0.5 * 0.182426 = -0.091213, and the opposite for pi_l
    assert pi.grad.tolist()[0] == pytest.approx([-0.091213, 0.091213], abs=1e-6)


# --- the stage on the tiny world --------------------------------------------------------------------------


def small_cfg(**kw):
    from tiller.stages.dpo import DPOConfig

    return DPOConfig(**{"beta": 0.1, "epochs": 2, "lr": 2e-3, "batch_size": 8, "max_len": 64, "valid_fraction": 0.2,
                        "checkpoint_every": 0, "report_to": [], **kw})


@pytest.fixture(scope="module")
def rankings_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("dpo-data") / "rankings.jsonl"
    write_jsonl(f, length_rankings(40, 3, seed=0, labelers=2))
    return f


def train_margin(cfg, policy_dir, ref_dir, rankings_file) -> dict[str, float]:
    """The implicit-reward statistics of the training items under ``policy_dir`` against ``ref_dir``."""
    from tiller.data import read_records
    from tiller.models import load_policy
    from tiller.stages.dpo import encode_items, evaluate, to_dpo_items
    from tiller.stages.reward import split_by_prompt

    train, _ = split_by_prompt(read_records(rankings_file, "ranking"), cfg.valid_fraction, cfg.seed)
    items = to_dpo_items(train)
    policy, tok = load_policy(policy_dir, trainable=False)
    ref, _ = load_policy(ref_dir, trainable=False)
    return evaluate(cfg, policy, ref, tok, items, encode_items(tok, items, cfg.max_len), policy.device)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pairs", "plackett_luce"])
def test_dpo_raises_the_implicit_reward_margin_of_the_training_pairs(mode, tiny_base_dir, rankings_file, tmp_path):
    from tiller.stages.dpo import dpo

    cfg = small_cfg(mode=mode)
    before = train_margin(cfg, tiny_base_dir, tiny_base_dir, rankings_file)
    assert before["margin"] == 0.0 and before["accuracy"] == 0.5  # the policy starts as the reference
    m = dpo(cfg, str(tiny_base_dir), str(tiny_base_dir), [rankings_file], tmp_path / "pol", tmp_path / "logs")
    after = train_margin(cfg, tmp_path / "pol", tiny_base_dir, rankings_file)
    assert after["margin"] > 0.5 and after["accuracy"] > 0.75, after
    assert m["train/rankings"] + m["eval/rankings"] == 80 and "eval/margin" in m
    history = json.loads((tmp_path / "pol" / MANIFEST).read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


@pytest.mark.slow
def test_interrupted_dpo_resumes_to_the_same_weights(tiny_base_dir, rankings_file, tmp_path, monkeypatch):
    from tiller.models import load_policy
    from tiller.stages import dpo as stage
    from tiller.training import Checkpointer

    cfg = small_cfg(checkpoint_every=3)  # 4 steps an epoch, 8 in all: checkpoints after steps 3 and 6
    a = stage.dpo(cfg, str(tiny_base_dir), str(tiny_base_dir), [rankings_file], tmp_path / "a", tmp_path / "logs")

    save = Checkpointer.save

    def save_then_die(self, loop_state):
        save(self, loop_state)
        raise KeyboardInterrupt  # killed right after the first checkpoint was written

    monkeypatch.setattr(stage.Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        stage.dpo(cfg, str(tiny_base_dir), str(tiny_base_dir), [rankings_file], tmp_path / "b", tmp_path / "logs")
    monkeypatch.undo()
    assert not (tmp_path / "b").exists() and list(tmp_path.glob(".b.ckpt-*"))  # nothing that looks done
    torch.manual_seed(123)  # the resumed run must not depend on the process's random state
    b = stage.dpo(cfg, str(tiny_base_dir), str(tiny_base_dir), [rankings_file], tmp_path / "b", tmp_path / "logs")
    assert not list(tmp_path.glob(".b.ckpt-*"))  # the checkpoint is gone once the folder is written
    steps = [r["step"] for r in read_metrics(tmp_path / "logs", "dpo-b") if "epoch" not in r]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]  # resumed after step 3, not started again
    for k, v in a.items():
        if k != "seconds":
            assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    wa, wb = load_policy(tmp_path / "a")[0].state_dict(), load_policy(tmp_path / "b")[0].state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


@pytest.mark.slow
def test_dpo_cli_writes_a_policy_and_skips_when_done(tiny_base_dir, rankings_file, tmp_path):
    from typer.testing import CliRunner

    from tiller.cli import app
    from tiller.models import load_policy

    out = tmp_path / "run" / "policy-dpo"
    args = ["dpo", "--run", str(tmp_path / "run"), "--policy", str(tiny_base_dir), "--ref", str(tiny_base_dir),
            "--rankings", str(rankings_file), "epochs=1", "batch_size=16", "max_len=48", "mode=plackett_luce",
            "report_to=[]"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"policy in {out}" in result.output and "eval/accuracy" in result.output
    text = (out / MANIFEST).read_text()
    manifest = json.loads(text)
    assert manifest["stage"] == "dpo" and manifest["config"]["mode"] == "plackett_luce"
    load_policy(out)  # a plain policy folder
    again = CliRunner().invoke(app, args)  # up to date: skipped, the folder untouched
    assert again.exit_code == 0 and (out / MANIFEST).read_text() == text
    bad = CliRunner().invoke(app, [*args[:-1], "beta=0"])
    assert bad.exit_code == 2 and "beta must be > 0" in bad.output


@pytest.mark.slow
def test_lora_dpo_trains_the_adapter_against_the_policy_with_it_disabled(tiny_base_dir, rankings_file, tmp_path):
    from tiller.adapters import ADAPTER_FILE, LoraConfig
    from tiller.stages.dpo import dpo

    cfg = small_cfg(lora=LoraConfig(r=8), lr=3e-3)
    m = dpo(cfg, str(tiny_base_dir), str(tiny_base_dir), [rankings_file], tmp_path / "pol", tmp_path / "logs")
    assert (tmp_path / "pol" / ADAPTER_FILE).is_file()  # the adapter alone, naming its base
    # the reference in training was the base under the adapter: the saved policy against the base model
    after = train_margin(cfg, tmp_path / "pol", tiny_base_dir, rankings_file)
    assert after["margin"] > 0.3 and after["accuracy"] > 0.7, (after, m)
