import json
import random
from collections import Counter

import pytest

from tiller.chat import render_conversation
from tiller.config import ConfigError, load_config
from tiller.world import FAMILIES, WorldConfig, build_world, load_world
from tiller.world.build import FILES, make_prompts
from tiller.world.entities import build_entities


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_byte_identical_other_seed_differs(tiny_dir, tmp_path, make_tiny):
    build_world(make_tiny(), tmp_path / "a")
    build_world(make_tiny(seed=1), tmp_path / "b")
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    for name in ("prompts.jsonl", "demos.jsonl", "corpus-train.jsonl", "world.json"):
        assert (tmp_path / "b" / name).read_bytes() != (tiny_dir / name).read_bytes(), name


def test_prompts_schema_and_counts(tiny_dir):
    prompts = _read_jsonl(tiny_dir / "prompts.jsonl")
    manifest = json.loads((tiny_dir / "manifest.json").read_text())
    assert len({p["id"] for p in prompts}) == len(prompts)
    for p in prompts:
        assert set(p) == {"id", "prompt", "user_id", "family", "split"}
        assert p["family"] in FAMILIES and p["split"] in ("train", "valid", "test")
        assert p["prompt"][-1]["role"] == "user"
        assert (len(p["prompt"]) == 3) == (p["family"] == "multiturn")
    counts = Counter((p["split"], p["family"]) for p in prompts)
    assert all(counts["test", f] == 5 for f in FAMILIES)  # n_test_per_family
    assert sum(counts[("train", f)] for f in FAMILIES) == 70
    assert manifest["counts"]["test"] == {f: 5 for f in FAMILIES}
    assert manifest["n_prompts"] == len(prompts)


def test_splits_are_by_user(tiny_dir):
    prompts = _read_jsonl(tiny_dir / "prompts.jsonl")
    users = {s: {p["user_id"] for p in prompts if p["split"] == s} for s in ("train", "valid", "test")}
    assert not users["train"] & users["test"]
    assert not users["train"] & users["valid"]
    assert not users["valid"] & users["test"]
    assert len(users["test"]) == 3


def test_held_out_prompts_never_in_corpus(tiny_dir):
    corpus = "".join(d["text"] for name in ("train", "valid")
                     for d in _read_jsonl(tiny_dir / f"corpus-{name}.jsonl"))
    held_out = [p for p in _read_jsonl(tiny_dir / "prompts.jsonl") if p["split"] != "train"]
    for p in held_out:
        assert render_conversation(p["prompt"]) not in corpus
        first = p["prompt"][0]["content"]  # also not as the first turn of a longer conversation
        assert f"<|user|>\n{first}<|end|>" not in corpus
    # ...while train prompts do show up there (same templates), so the check above can fail
    train = [p for p in _read_jsonl(tiny_dir / "prompts.jsonl") if p["split"] == "train"]
    assert any(f"<|user|>\n{p['prompt'][0]['content']}<|end|>" in corpus for p in train)


def test_corpus_covers_world_and_families(tiny_dir, tiny_world):
    docs = [d["text"] for d in _read_jsonl(tiny_dir / "corpus-train.jsonl")]
    text = "".join(docs)
    assert 20_000 <= len(text) < 21_000  # corpus_chars, overshooting by at most one document
    valid = sum(len(d["text"]) for d in _read_jsonl(tiny_dir / "corpus-valid.jsonl"))
    assert 1_000 <= valid < 2_000  # corpus_valid_frac = 0.05
    for person in tiny_world.entities.people:
        assert person.name in text
    # dialogues with an unaligned assistant, covering the families by their typical prompt words
    assert text.count("<|assistant|>") > 20
    for marker in (" + ", "backwards", "Sort", "born", "review", "poison", "Now "):
        assert marker in text, marker


def test_demos_are_train_prompts_mostly_ideal(tiny_dir, tiny_world):
    prompts = {p["id"]: p for p in _read_jsonl(tiny_dir / "prompts.jsonl")}
    demos = _read_jsonl(tiny_dir / "demos.jsonl")
    assert len(demos) == 40
    for d in demos:
        assert set(d) == {"id", "prompt", "response", "user_id", "labeler"}
        p = prompts[d["id"]]
        assert p["split"] == "train" and p["prompt"] == d["prompt"] and p["user_id"] == d["user_id"]
    ideal = sum(d["response"] == tiny_world.judge.ideal(d["prompt"]) for d in demos)
    assert 0.5 * len(demos) <= ideal < len(demos)  # most, not all (demo_variation=0.3)


def test_default_sizes_filled_and_texts_short():
    cfg = WorldConfig()
    ents = build_entities(random.Random(0), cfg.n_people, cfg.n_places, cfg.n_venues, cfg.n_fake_people)
    prompts, tasks = make_prompts(cfg, ents)
    for p in prompts:
        assert len(p["prompt"][-1]["content"].split()) <= 20, p
    assert max(len(t.ideal.split()) for t in tasks.values()) <= 12
    assert len(tasks) == len(prompts)
    counts = Counter((p["split"], p["family"]) for p in prompts)
    assert all(counts["train", f] == 200 and counts["valid", f] == 20 and counts["test", f] == 60 for f in FAMILIES)


def test_load_world_round_trip(tiny_dir, tiny_world):
    again = load_world(tiny_dir)
    assert again.prompts == tiny_world.prompts
    p = again.prompts[0]
    assert again.judge.score(p["prompt"], "x") == tiny_world.judge.score(p["prompt"], "x")
    assert again.judge.task_for(p) == tiny_world.judge.task_for(p["prompt"])


def test_manifest_has_agreement(tiny_dir):
    m = json.loads((tiny_dir / "manifest.json").read_text())
    assert 0.0 < m["labeler_agreement_half_credit"] <= 1.0
    assert 0.0 < m["gold_agreement_half_credit"] <= 1.0
    assert "labeler_agreement" not in m  # one name per measure: the ties-excluded one is the reward stage's
    assert m["config"]["seed"] == 0 and m["corpus"]["train"]["chars"] >= 20_000


@pytest.mark.parametrize("override", ["n_people=0", "demo_variation=1.5", "n_demos=99999", "families_per_user=9"])
def test_bad_config_is_refused(override):
    with pytest.raises(ConfigError):
        load_config(WorldConfig, None, [override])
