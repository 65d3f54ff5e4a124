"""The training stages on the tiny world: each one has to *learn* something, not just run.

The base model comes from the session fixture ``tiny_base_dir`` (tests/conftest.py)."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest
import torch

from tiller.data import Ranking, read_records, write_jsonl
from tiller.runs import MANIFEST, read_manifest
from tiller.tracking import read_metrics

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "rock", "fish", "bird", "milk"]


def banana_rankings(n: int, k: int, seed: int) -> list[Ranking]:
    """K short random answers per prompt; those containing 'banana' are tied first, the rest tied after."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        n_good = rng.randint(1, k - 1)
        responses = []
        for j in range(k):
            words = rng.choices(WORDS, k=rng.randint(2, 4))
            if j < n_good:
                words.insert(rng.randint(0, len(words)), "banana")
            responses.append(" ".join(words))
        order = list(range(k))
        rng.shuffle(order)
        responses = [responses[o] for o in order]
        good = [i for i, r in enumerate(responses) if "banana" in r]
        bad = [i for i, r in enumerate(responses) if "banana" not in r]
        out.append(Ranking(f"Say something, number {i}.", responses, [good, bad], labeler="rule", id=f"r{i}"))
    return out


@pytest.fixture(scope="module")
def banana_rm(tiny_base_dir, tiny_world_dir, tmp_path_factory):
    from tiller.stages.reward import RMConfig, train_rm

    work = tmp_path_factory.mktemp("rm")
    write_jsonl(work / "rankings.jsonl", banana_rankings(300, 4, seed=0))
    cfg = RMConfig(epochs=2, lr=2e-3, batch_size=16, max_len=64, valid_fraction=0.2, report_to=[])
    metrics = train_rm(cfg, str(tiny_base_dir), [work / "rankings.jsonl"], tiny_world_dir / "demos.jsonl",
                       work / "rm", work / "logs")
    return work, metrics


def test_pretraining_loss_falls(tiny_base_dir):
    rows = [r for r in read_metrics(tiny_base_dir.parent / "logs", "pretrain") if "loss/train" in r]
    first, last = rows[0]["loss/train"], rows[-1]["loss/train"]
    assert last < first - 0.3, (first, last)
    m = read_manifest(tiny_base_dir)
    assert m["stage"] == "pretrain" and m["metrics"]["eval/perplexity"] < 400  # vocab 400: better than uniform


def test_rm_learns_a_planted_rule(banana_rm):
    _, metrics = banana_rm
    assert metrics["eval/rankings"] == 60 and metrics["train/rankings"] == 240  # 20% of the prompts held out
    assert metrics["eval/accuracy"] >= 0.95, metrics


def test_rm_bias_centres_demonstrations(banana_rm, tiny_world_dir):
    from tiller.scoring import RewardScorer

    work, metrics = banana_rm
    demos = read_records(tiny_world_dir / "demos.jsonl", "demonstration")
    scorer = RewardScorer(str(work / "rm"))  # scores with the max_len it was trained with
    raw = scorer.raw_scores([d.prompt for d in demos], [d.response for d in demos])
    scores = scorer.score([d.prompt for d in demos], [d.response for d in demos])
    assert abs(float(raw.mean())) > 1e-3  # the bias has something to correct...
    assert abs(sum(scores) / len(scores)) < 1e-4  # ...and after it, demonstrations score mean 0
    assert metrics["rm/bias"] == pytest.approx(-float(raw.mean()), abs=1e-5)
    # the rule survives the shift: a banana answer outscores the same answer without it
    p = "Say something, number 1."
    with_b, without = scorer.score([p, p], ["red banana cat", "red cat"])
    assert with_b > without


def test_normalisation_from_all_answers_or_a_seeded_subset(tiny_base_dir, tiny_world_dir):
    """With every answer the bias centres the demonstrations exactly and the gain gives the ranked answers std
    1; with ``norm_samples`` the same holds on a seeded subset, which is all a mean and a std need."""
    from tiller.models import ScalarModel, load_tokenizer
    from tiller.scoring import RewardScorer, score_sorted
    from tiller.stages.reward import encode_records, normalisation_seqs, set_normalisation, to_items

    tok = load_tokenizer(tiny_base_dir)
    torch.manual_seed(0)
    model = ScalarModel.from_pretrained(tiny_base_dir, tok).eval()
    torch.nn.init.normal_(model.hf.score.weight, std=1.0)  # a zero head would score everything 0
    demos = read_records(tiny_world_dir / "demos.jsonl", "demonstration")
    sets = to_items(banana_rankings(40, 4, seed=1), merge=True)
    answer_seqs = [x for seqs in encode_records(tok, sets, 64) for x in seqs]
    d_all, a_all = normalisation_seqs(tok, demos, answer_seqs, 64, 0, seed=0)
    assert len(d_all) == len(demos) and len(a_all) == 4 * len(sets)
    set_normalisation(model, tok.pad_token_id, d_all, a_all)
    scorer = RewardScorer.from_model(model, tok, max_len=64)
    assert abs(float(np.mean(scorer.score([d.prompt for d in demos], [d.response for d in demos])))) < 1e-4
    answers = scorer.score([r.prompt for r in sets for _ in r.responses], [x for r in sets for x in r.responses])
    assert float(torch.tensor(answers).std()) == pytest.approx(1.0, abs=1e-4)

    d_sub, a_sub = normalisation_seqs(tok, demos, answer_seqs, 64, 50, seed=0)
    assert len(d_sub) == len(a_sub) == 50 and all(x in d_all for x in d_sub) and all(x in a_all for x in a_sub)
    assert normalisation_seqs(tok, demos, answer_seqs, 64, 50, seed=0) == (d_sub, a_sub)  # seeded
    with torch.no_grad():
        raw_sub = score_sorted(model, d_sub, tok.pad_token_id, "cpu")
    assert set_normalisation(model, tok.pad_token_id, d_sub, [])["rm/bias"] == pytest.approx(-float(raw_sub.mean()))


def test_eval_cli_prints_headroom(banana_rm, tiny_base_dir, tiny_world_dir):
    """``tiller eval --headroom-rm``: n = 1, 2, 4 rows; n = 1 is the same pick both ways, and the gold judge's
    pick never loses to the RM's."""
    from typer.testing import CliRunner

    from tiller.cli import app

    work, _ = banana_rm
    r = CliRunner().invoke(app, ["eval", "--policy", str(tiny_base_dir), "--world", str(tiny_world_dir),
                                 "--n-per-family", "2", "--headroom-rm", str(work / "rm")])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("headroom:"))
    rows = [line.split() for line in lines[start + 2 : start + 5]]
    assert [row[0] for row in rows] == ["1", "2", "4"]
    rates = [(float(row[1].rstrip("%")), float(row[4].rstrip("%"))) for row in rows]
    assert rates[0][0] == rates[0][1] and all(gold >= rm for rm, gold in rates)
    bad = CliRunner().invoke(app, ["eval", "--policy", str(tiny_base_dir), "--world", str(tiny_world_dir),
                                   "--headroom-rm", str(work / "rm"), "--headroom-n", "1"])
    assert bad.exit_code == 2 and "--headroom-n must be at least 2" in bad.stderr


def test_default_scorer_matches_training_truncation(banana_rm, tiny_world_dir):
    from tiller.scoring import RewardScorer

    work, _ = banana_rm
    demos = read_records(tiny_world_dir / "demos.jsonl", "demonstration")
    scores = RewardScorer(str(work / "rm")).score([d.prompt for d in demos], [d.response for d in demos])
    assert abs(sum(scores) / len(scores)) < 1e-4


@pytest.mark.slow  # three reward models: ~9 s on a loaded 2-core machine, the slowest of this module
def test_rm_ensemble_over_merged_labelers(tiny_base_dir, tiny_world_dir, tmp_path):
    """Three labelers per prompt, one of whom always reverses the rule: rankings of one response set train as
    one item with 2/3 targets, and an ensemble of two scores with the mean of its members."""
    from tiller.models import ScalarModel, load_tokenizer, reward_members
    from tiller.scoring import RewardScorer
    from tiller.stages.reward import RMConfig, train_rm

    records = []
    for r in banana_rankings(300, 4, seed=1):
        good, bad = r.ranking
        records += [Ranking(r.prompt, r.responses, [good, bad], f"sim-{n}", id=r.id) for n in (0, 1)]
        records.append(Ranking(r.prompt, r.responses, [bad, good], "contrarian", id=r.id))
    write_jsonl(tmp_path / "rankings.jsonl", records)
    cfg = RMConfig(epochs=2, lr=2e-3, batch_size=16, max_len=64, valid_fraction=0.2, ensemble=2, report_to=[])
    m = train_rm(cfg, str(tiny_base_dir), [tmp_path / "rankings.jsonl"], tiny_world_dir / "demos.jsonl",
                 tmp_path / "rm", tmp_path / "logs")
    assert m["train/rankings"] == 720 and m["train/items"] == 240  # three labels, one forward per response
    # against individual labels the best possible is 2/3 (the contrarian is always wrong), the rule reversed 1/3
    assert 0.6 <= m["eval/accuracy"] <= 2 / 3 + 1e-6, m
    assert all(0.6 <= m[f"eval/accuracy_member{i}"] for i in (0, 1)), m
    members = reward_members(tmp_path / "rm")
    assert members == [tmp_path / "rm", tmp_path / "rm" / "members" / "1"]
    p = "Say something, number 1."
    prompts, texts = [p, p, p], ["red banana cat", "red cat", "fish moon banana"]
    tok = load_tokenizer(tmp_path / "rm")
    each = [RewardScorer.from_model(ScalarModel.from_pretrained(d, tok), tok, max_len=64).score(prompts, texts)
            for d in members]
    assert RewardScorer(str(members[1])).score(prompts, texts) == pytest.approx(each[1], abs=1e-6)  # an RM itself
    assert each[0] != each[1]  # different data orders give different models
    assert RewardScorer(str(tmp_path / "rm")).score(prompts, texts) == pytest.approx(
        [(a + b) / 2 for a, b in zip(*each, strict=True)], abs=1e-5)
    # uncertainty-weighted: mean minus the members' (population) std, which for two members is |a - b| / 2
    assert RewardScorer(str(tmp_path / "rm"), uncertainty=1.0).score(prompts, texts) == pytest.approx(
        [(a + b) / 2 - abs(a - b) / 2 for a, b in zip(*each, strict=True)], abs=1e-5)
    assert each[0][0] > each[0][1] and each[1][0] > each[1][1]


def test_sft_lowers_response_loss_and_skips_when_done(tiny_base_dir, tiny_world_dir, tmp_path):
    from tiller.models import load_policy
    from tiller.stages.sft import SFTConfig, encode_demos, eval_loss, sft

    cfg = SFTConfig(epochs=3, lr=2e-3, batch_size=16, max_len=96, valid_fraction=0.2, report_to=[])
    demos_path, out = tiny_world_dir / "demos.jsonl", tmp_path / "sft"
    metrics = sft(cfg, str(tiny_base_dir), demos_path, out, tmp_path / "logs")
    # the same held-out demonstrations sft() used: shuffled with the seed, first 20% (see sft.sft)
    demos = read_records(demos_path, "demonstration")
    random.Random(cfg.seed).shuffle(demos)
    valid = demos[: int(len(demos) * cfg.valid_fraction)]
    base, tok = load_policy(tiny_base_dir)
    base_loss = eval_loss(base, encode_demos(tok, valid, cfg.max_len), tok.pad_token_id, 16)
    tuned, tok2 = load_policy(out)
    tuned_loss = eval_loss(tuned, encode_demos(tok2, valid, cfg.max_len), tok2.pad_token_id, 16)
    assert tuned_loss == pytest.approx(metrics["loss/eval"], rel=1e-4)
    assert tuned_loss < base_loss - 0.2, (base_loss, tuned_loss)  # 4.60 -> 4.24 when written

    # rerun with the same config: skipped, quickly, the folder untouched
    manifest, inode = (out / MANIFEST).read_text(), out.stat().st_ino
    t = time.time()
    assert sft(cfg, str(tiny_base_dir), demos_path, out, tmp_path / "logs") == metrics
    assert time.time() - t < 5
    assert (out / MANIFEST).read_text() == manifest and out.stat().st_ino == inode
    # force redoes it (a new folder replaces the old one)
    sft(cfg, str(tiny_base_dir), demos_path, out, tmp_path / "logs", force=True)
    assert out.stat().st_ino != inode
    assert json.loads((out / MANIFEST).read_text())["fingerprint"] == json.loads(manifest)["fingerprint"]


def test_pretrain_rerun_is_skipped(tiny_base_dir, tiny_world_dir):
    from tiller.config import from_dict
    from tiller.stages.pretrain import PretrainConfig, pretrain

    manifest, inode = (tiny_base_dir / MANIFEST).read_text(), tiny_base_dir.stat().st_ino
    cfg = from_dict(PretrainConfig, json.loads(manifest)["config"])  # the config the manifest recorded
    t = time.time()
    metrics = pretrain(cfg, tiny_world_dir / "corpus-train.jsonl",
                       tiny_world_dir / "corpus-valid.jsonl", tiny_base_dir, tiny_base_dir.parent / "logs")
    assert time.time() - t < 5
    assert metrics == json.loads(manifest)["metrics"]
    assert (tiny_base_dir / MANIFEST).read_text() == manifest and tiny_base_dir.stat().st_ino == inode


def test_sample_then_label_with_world_labelers(tiny_base_dir, tiny_world_dir, tmp_path):
    from typer.testing import CliRunner

    from tiller.cli import app

    runner = CliRunner()
    samples, rankings = tmp_path / "samples.jsonl", tmp_path / "rankings.jsonl"
    r = runner.invoke(app, ["sample", "--run", str(tmp_path / "run"), "--policy", str(tiny_base_dir),
                            "--prompts", str(tiny_world_dir / "prompts.jsonl"), "--out", str(samples),
                            "k=3", "n_prompts=4", "max_new_tokens=8", "batch_size=16"])
    assert r.exit_code == 0, r.output
    sets = read_records(samples, "sample", allow_empty=True)  # model answers may be empty
    assert len(sets) == 4 and all(len(s.responses) == 3 for s in sets)
    assert len({s.id for s in sets}) == 4
    prompts = {p.id: p for p in read_records(tiny_world_dir / "prompts.jsonl", "prompt")}
    assert all(prompts[s.id].split == "train" and prompts[s.id].prompt == s.prompt for s in sets)

    r = runner.invoke(app, ["label", "--run", str(tmp_path / "run"), "--labeler", "world", "--samples", str(samples),
                            "--out", str(rankings), "overlap=2", f"world={tiny_world_dir}"])
    assert r.exit_code == 0, r.output
    records = read_records(rankings, "ranking", allow_empty=True)
    assert len(records) == 8
    for s in sets:
        mine = [x for x in records if x.id == s.id]
        assert len(mine) == 2 and mine[0].labeler != mine[1].labeler
        assert all(x.responses == s.responses for x in mine)


def test_sample_mixes_answers_from_a_second_policy(tiny_base_dir, tiny_world_dir, tmp_path):
    """mix_k of the K answers come from mix_with, after the policy's own, each as that policy alone samples."""
    import torch

    from tiller.models import load_policy
    from tiller.rollout import generate
    from tiller.stages.sample import SampleConfig, sample

    model, tok = load_policy(str(tiny_base_dir))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))  # another policy, so its answers differ
    other = tmp_path / "other"
    model.save_pretrained(other)
    tok.save_pretrained(other)
    prompts = tiny_world_dir / "prompts.jsonl"
    base = SampleConfig(n_prompts=4, max_new_tokens=8, batch_size=16, seed=3)
    sample(SampleConfig(**{**vars(base), "k": 3, "mix_with": str(other), "mix_k": 1}), str(tiny_base_dir), prompts,
           tmp_path / "mixed.jsonl")
    sample(SampleConfig(**{**vars(base), "k": 2}), str(tiny_base_dir), prompts, tmp_path / "own.jsonl")
    mixed, own = (read_records(tmp_path / f, "sample", allow_empty=True) for f in ("mixed.jsonl", "own.jsonl"))
    assert [s.id for s in mixed] == [s.id for s in own]
    assert [m.responses[:2] for m in mixed] == [o.responses for o in own]
    theirs = generate(*load_policy(str(other)), [m.prompt for m in mixed], n=1, temperature=1.0, max_new_tokens=8,
                      batch_size=16, seed=3).texts
    assert [m.responses[2] for m in mixed] == theirs
    assert mixed[0].policy == f"{tiny_base_dir}:2+{other}:1"
    assert [m.responses[2] for m in mixed] != [o.responses[0] for o in own]


def test_to_items_merges_rankings_of_the_same_responses():
    from tiller.stages.reward import to_items

    a = Ranking("p", ["x", "y", "z"], [[0], [1, 2]], "sim-0")
    b = Ranking("p", ["x", "y", "z"], [[1], [0], [2]], "sim-1")
    c = Ranking("p", ["x", "y", "w"], [[2], [0, 1]], "sim-0")  # other responses: its own item
    items = to_items([a, b, c], merge=True)
    assert [it.n_labels for it in items] == [2, 1]
    assert items[0].prefs == [[0.0, 0.5, 1.0], [0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]
    assert items[1].prefs == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    assert [it.n_labels for it in to_items([a, b, c], merge=False)] == [1, 1, 1]
