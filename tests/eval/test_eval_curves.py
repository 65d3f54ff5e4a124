import math

import numpy as np
import pytest
import torch

from tiller.eval.curves import best_of_n, bon_curve, bon_kl, gold_matches, headroom

DOCS = ["The river Olun runs past Kest and the mill.", "Mira Tolan was born in Kest in 1843.",
        "Sort these numbers: 5, 2, 9. The answer is 2, 5, 9.", "Tam Ruvo is a smith from Lorn."] * 20
PROMPTS = ["What is 17 + 25?", "Where was Mira Tolan born?", "Sort these numbers: 5, 2, 9."]


@pytest.fixture(scope="module")
def tiny_policy_and_rm(tmp_path_factory):
    """A 1-layer GPT-2 and a reward model on top of it with a random (not zero) head."""
    from tiller.models import ScalarModel
    from tiller.stages.pretrain import PretrainConfig, build_model, train_tokenizer

    root = tmp_path_factory.mktemp("bon")
    torch.manual_seed(0)
    tok = train_tokenizer(DOCS, 400)
    model = build_model(PretrainConfig(n_layer=1, n_embd=32, n_head=2, vocab_size=400), tok)
    model.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    rm = ScalarModel.from_pretrained(root / "policy")
    torch.nn.init.normal_(rm.hf.score.weight, std=1.0)  # a zero head would score every answer 0
    rm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    return root / "policy", root / "rm"


def test_bon_kl_closed_form():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    with pytest.raises(ValueError):
        bon_kl(0)


def test_best_of_n_by_hand():
    rm = np.array([[0.1, 0.5, 0.3, 0.9],
                   [0.7, 0.2, 0.7, 0.1]])
    gold = np.array([[1.0, 2.0, 3.0, 4.0],
                     [5.0, 6.0, 7.0, 8.0]])
    rows = best_of_n(rm, gold, ns=(4, 1, 2))
    assert [r["n"] for r in rows] == [1, 2, 4]
    # n=1: first samples; n=2: 0.5 (gold 2) and 0.7 (gold 5); n=4: 0.9 (gold 4) and the first 0.7 (gold 5)
    assert [r["rm_score"] for r in rows] == pytest.approx([0.4, 0.6, 0.8])
    assert [r["gold_score"] for r in rows] == pytest.approx([3.0, 3.5, 4.5])
    # the gold judge's own pick: n=1 the first samples, n=2 gold 2 and 6, n=4 gold 4 and 8
    assert [r["oracle_gold_score"] for r in rows] == pytest.approx([3.0, 4.0, 6.0])
    assert rows[0]["kl"] == 0.0
    with pytest.raises(ValueError, match="samples"):
        best_of_n(rm, gold, ns=(8,))


def test_headroom_by_hand():
    """Win rates of the RM's and the gold judge's pick against one baseline answer, worked out by hand."""
    value = {"bad": 0, "ok": 1, "good": 2}

    def compare(prompt, a, b):  # 1 if a is better, 0.5 for a tie
        return 1.0 if value[a] > value[b] else 0.5 if value[a] == value[b] else 0.0

    prompts = ["p0", "p1"]
    cands = [["ok", "bad", "good"], ["bad", "good", "ok"]]
    gold = np.array([[value[t] for t in c] for c in cands], dtype=float)
    rm = np.array([[0.0, 1.0, 0.5],    # p0: prefers "bad" at n=2, still "bad" at n=3
                   [0.0, 0.0, 1.0]])   # p1: "bad" at n=2 (tie goes to the first), "ok" at n=3
    rows = headroom(compare, prompts, cands, rm, gold, ["ok", "ok"], ns=(3, 1, 2))
    assert [r["n"] for r in rows] == [1, 2, 3]
    # n=1: ok vs ok (0.5), bad vs ok (0) -> 0.25 for both pickers
    assert rows[0]["rm"]["rate"] == rows[0]["gold"]["rate"] == pytest.approx(0.25)
    # n=2: RM picks bad, bad -> 0; gold picks ok (tie 0.5), good (1) -> 0.75
    assert rows[1]["rm"]["rate"] == pytest.approx(0.0)
    assert rows[1]["gold"]["rate"] == pytest.approx(0.75)
    # n=3: RM picks bad (0), ok (0.5) -> 0.25; gold picks good, good -> 1
    assert rows[2]["rm"]["rate"] == pytest.approx(0.25)
    assert rows[2]["gold"]["rate"] == pytest.approx(1.0)
    assert rows[2]["gold"]["lo"] <= rows[2]["gold"]["rate"] <= rows[2]["gold"]["hi"]
    assert rows[1]["kl"] == pytest.approx(bon_kl(2))
    with pytest.raises(ValueError, match="n=4"):
        headroom(compare, prompts, cands, rm, gold, ["ok", "ok"], ns=(4,))
    with pytest.raises(ValueError, match="baseline"):
        headroom(compare, prompts, cands, rm, gold, ["ok"], ns=(2,))


def test_bon_curve_on_tiny_model(tiny_policy_and_rm):
    from tiller.models import load_policy
    from tiller.rollout import generate
    from tiller.scoring import RewardScorer

    policy, rm_path = tiny_policy_and_rm
    calls = []

    def gold_fn(prompts, texts):  # gold = answer length in characters
        calls.append(len(texts))
        return [float(len(t)) for t in texts]

    ns = (1, 2, 4, 8)
    rows = bon_curve(policy, rm_path, PROMPTS, gold_fn, ns=ns, seed=3, max_new_tokens=12)
    assert calls == [len(PROMPTS) * 8]  # sampled and judged once, not once per n
    assert [r["n"] for r in rows] == list(ns)
    assert [r["kl"] for r in rows] == pytest.approx([bon_kl(n) for n in ns])
    rm_col = [r["rm_score"] for r in rows]
    assert all(b >= a for a, b in zip(rm_col, rm_col[1:], strict=False))  # max over a growing set
    assert rm_col[-1] > rm_col[0]  # a random head separates samples

    # the same seed draws the same samples: recompute the n=1 and n=8 rows independently
    model, tok = load_policy(policy)
    ro = generate(model, tok, PROMPTS, n=8, temperature=1.0, seed=3, max_new_tokens=12)
    texts = ro.texts
    flat = [p for p in PROMPTS for _ in range(8)]
    assert not all(ro.ended)  # some answers were cut off: they are scored unfinished, as RL scores them
    rm = np.array(RewardScorer(str(rm_path)).score(flat, texts, ro.ended)).reshape(3, 8)
    lengths = np.array([len(t) for t in texts], dtype=float).reshape(3, 8)
    assert rows[0]["rm_score"] == pytest.approx(rm[:, 0].mean(), abs=1e-5)
    assert rows[0]["gold_score"] == pytest.approx(lengths[:, 0].mean())
    assert rows[-1]["rm_score"] == pytest.approx(rm.max(1).mean(), abs=1e-5)
    assert rows[-1]["gold_score"] == pytest.approx(lengths[np.arange(3), rm.argmax(1)].mean())


class LengthJudge:
    """Prefers the longer answer; equal lengths tie."""

    def compare(self, prompt, a, b):
        return 0.5 if len(a) == len(b) else float(len(a) > len(b))


def test_gold_matches_all_pairs_per_prompt():
    answers = {"base": ["x", "xx"], "sft": ["xxx", "xx"], "ppo": ["xx", "xxxx"]}
    matches = gold_matches(LengthJudge(), answers, ["p1", "p2"])
    assert matches == [("base", "sft", 0.0), ("base", "sft", 0.5),
                       ("base", "ppo", 0.0), ("base", "ppo", 0.0),
                       ("sft", "ppo", 1.0), ("sft", "ppo", 0.0)]
    with pytest.raises(ValueError, match="'sft' has 1 answers"):
        gold_matches(LengthJudge(), {"base": ["a", "b"], "sft": ["b"]}, ["p1", "p2"])


class LengthScoreJudge(LengthJudge):
    def score(self, prompt, text):
        return float(len(text))


def test_policy_headroom_on_tiny_model(tiny_policy_and_rm):
    """The gold judge's pick beats the baseline at least as often as the RM's, and more so as n grows."""
    from tiller.eval.curves import policy_headroom

    policy, rm_path = tiny_policy_and_rm
    prompts = PROMPTS * 4
    baseline = ["a reply of middling length"] * len(prompts)
    rows = policy_headroom(policy, rm_path, prompts, baseline, LengthScoreJudge(), n=4, temperature=1.0, seed=5,
                           max_new_tokens=12)
    assert [r["n"] for r in rows] == [1, 2, 4]
    assert rows[0]["rm"]["rate"] == rows[0]["gold"]["rate"]  # n=1: both take the first sample
    gold = [r["gold"]["rate"] for r in rows]
    assert all(b >= a for a, b in zip(gold, gold[1:], strict=False))
    assert all(r["gold"]["rate"] >= r["rm"]["rate"] for r in rows)
    assert gold[-1] > gold[0]  # a random policy's answers differ in length
