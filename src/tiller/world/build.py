"""Build the world into a folder of files, and load it back.

    prompts.jsonl  demos.jsonl  corpus-train.jsonl  corpus-valid.jsonl  world.json  manifest.json

Training stages read only the first four, as they would read files written by people; ``world.json`` is
the hidden state only this package reads (entities, and the task behind each prompt for the judge).
Every random choice comes from a generator seeded by (seed, purpose), so a seed gives byte-identical files.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiller.chat import Messages, prompt_key
from tiller.config import from_dict, to_dict
from tiller.world.answers import candidates, unaligned
from tiller.world.config import FAMILIES, WorldConfig
from tiller.world.constraints import constrain, satisfied
from tiller.world.corpus import build_corpus, prefix_keys
from tiller.world.entities import Entities, build_entities
from tiller.world.judge import SCORE_RANGE, GoldJudge
from tiller.world.labelers import LabelerPool
from tiller.world.tasks import Family, Task, generators

SPLITS = ("train", "valid", "test")
FILES = ("prompts.jsonl", "demos.jsonl", "corpus-train.jsonl", "corpus-valid.jsonl", "world.json", "manifest.json")


@dataclass
class World:
    config: WorldConfig
    entities: Entities
    tasks: dict[str, Task]
    prompts: list[dict[str, Any]]
    judge: GoldJudge
    labelers: LabelerPool

    def task(self, prompt: Any) -> Task:
        task = self.judge.task_for(prompt)
        if task is None:
            raise KeyError(f"prompt not in this world: {str(prompt)[:80]!r}")
        return task

    def candidates(self, prompt: Any, rng: random.Random, k: int = 4) -> list[str]:
        """K responses of a realistic mix (ideal, filler, rambling, wrong, hallucinated, refusal, complying)."""
        return candidates(self.task(prompt), rng, self.entities, k)

    def unaligned(self, prompt: Any, rng: random.Random) -> str:
        """An answer as the pretraining corpus's unaligned assistant would give it."""
        return unaligned(self.task(prompt), rng, self.entities)


def _rng(cfg: WorldConfig, purpose: str) -> random.Random:
    return random.Random(f"tiller-world-{cfg.seed}-{purpose}")


def _users(cfg: WorldConfig, rng: random.Random) -> dict[str, list[tuple[str, list[str]]]]:
    """split -> [(user_id, families)]; every family has at least one writer in every split."""
    out, uid = {}, 0
    for split, n in zip(SPLITS, (cfg.n_train_users, cfg.n_valid_users, cfg.n_test_users), strict=True):
        order = list(FAMILIES)
        rng.shuffle(order)
        users = [(f"user-{uid + j:03d}", [order[(j + k) % len(order)] for k in range(cfg.families_per_user)])
                 for j in range(n)]
        for f_idx, fam in enumerate(order):
            if not any(fam in fams for _, fams in users):
                users[f_idx % n][1].append(fam)
        out[split] = users
        uid += n
    return out


def with_constraints(makers: dict[str, Family], fraction: float, crng: random.Random) -> dict[str, Family]:
    """The families with an explicit constraint on a ``fraction`` of their prompts, drawn from ``crng`` (a
    stream of its own, so that the prompts themselves do not depend on the fraction)."""
    if fraction <= 0:
        return makers

    def wrap(make: Family) -> Family:
        def made(rng: random.Random, ents: Entities) -> tuple[Messages, Task]:
            messages, task = make(rng, ents)
            return constrain(messages, task, crng) if crng.random() < fraction else (messages, task)
        return made
    return {fam: wrap(make) for fam, make in makers.items()}


def _family_slots(n: int, rng: random.Random) -> list[str]:
    slots = [FAMILIES[i % len(FAMILIES)] for i in range(n)]
    rng.shuffle(slots)
    return slots


def make_prompts(cfg: WorldConfig, ents: Entities) -> tuple[list[dict[str, Any]], dict[str, Task]]:
    """Prompts of all splits; no prompt (nor the first turn of a multi-turn one) is used twice."""
    rng = _rng(cfg, "prompts")
    makers = with_constraints(generators(cfg.fake_fraction), cfg.constraint_fraction, _rng(cfg, "constraints"))
    users = _users(cfg, rng)
    sizes = {"train": cfg.n_train_prompts, "valid": cfg.n_valid_prompts,
             "test": cfg.n_test_per_family * len(FAMILIES)}
    prompts: list[dict[str, Any]] = []
    tasks: dict[str, Task] = {}
    used: set[str] = set()
    for split in reversed(SPLITS):  # test first: if a family's prompt space runs out, train is the one short
        counts = dict.fromkeys(FAMILIES, 0)
        for fam in _family_slots(sizes[split], rng):
            for _attempt in range(200):
                messages, task = makers[fam](rng, ents)
                keys = prefix_keys(messages)
                if not keys & used:
                    break
            else:
                continue  # this family's prompt space is exhausted at this world size
            used |= keys
            tasks[prompt_key(messages)] = task
            user = rng.choice([u for u, fams in users[split] if fam in fams])
            prompts.append({"id": f"{split}-{fam}-{counts[fam]:04d}", "prompt": messages, "user_id": user,
                            "family": fam, "split": split})
            counts[fam] += 1
    prompts.sort(key=lambda p: SPLITS.index(p["split"]))  # stable: train, valid, test
    return prompts, tasks


def make_demos(cfg: WorldConfig, prompts: list[dict[str, Any]], judge: GoldJudge) -> list[dict[str, Any]]:
    rng = _rng(cfg, "demos")
    train = [p for p in prompts if p["split"] == "train"]
    # weighted sampling without replacement (Efraimidis & Spirakis 2006): key u^(1/w), keep the largest
    weights = [cfg.demo_family_weights.get(p["family"], 1.0) for p in train]
    keys = [rng.random() ** (1.0 / w) if w > 0 else -1.0 for w in weights]
    ranked = sorted(range(len(train)), key=lambda i: keys[i], reverse=True)
    chosen = sorted(i for i in ranked[: min(cfg.n_demos, len(train))] if keys[i] >= 0)
    demos = []
    for i in chosen:
        p = train[i]
        writer = rng.randrange(cfg.n_demo_writers)
        demos.append({"id": p["id"], "prompt": p["prompt"], "response": judge.demonstrate(p["prompt"], rng),
                      "user_id": p["user_id"], "labeler": f"sim-{writer}"})
    return demos


def agreement_items(world: World, n_items: int, seed: int, k: int = 4) -> list[tuple[Messages, list[str]]]:
    rng = random.Random(f"agreement-items-{seed}")
    pool = [p["prompt"] for p in world.prompts if p["split"] == "train"] or [p["prompt"] for p in world.prompts]
    return [(prompt, world.candidates(prompt, rng, k)) for prompt in (rng.choice(pool) for _ in range(n_items))]


def measure_agreement(world: World, n_items: int, seed: int) -> float:
    """Half-credit agreement (ties counted, see ``tiller.data.agreement``) of two different simulated
    labelers on ``n_items`` K=4 rankings."""
    return world.labelers.agreement(agreement_items(world, n_items, seed), random.Random(f"agreement-{seed}"))


def measure_gold_agreement(world: World, n_items: int, seed: int) -> float:
    """Half-credit agreement of one simulated labeler with the noiseless gold ranking on the same kind of items."""
    return world.labelers.gold_agreement(agreement_items(world, n_items, seed),
                                         random.Random(f"gold-agreement-{seed}"))


def _make_world(cfg: WorldConfig, ents: Entities, tasks: dict[str, Task], prompts: list[dict[str, Any]]) -> World:
    judge = GoldJudge(ents, tasks, cfg.demo_variation, cfg.demo_mistake, cfg.demo_constraint_miss)
    labelers = LabelerPool(judge, cfg.n_labelers, cfg.labeler_temperature, cfg.labeler_bias, cfg.labeler_tie,
                           cfg.flag_noise, cfg.seed)
    return World(cfg, ents, tasks, prompts, judge, labelers)


def _constraint_share(world: World, demos: list[dict[str, Any]]) -> float | None:
    """Share of the demonstrations of constrained prompts that meet the constraint (None: no such demos)."""
    spec = [(world.task(d["prompt"]).params.get("constraint"), d["response"]) for d in demos]
    met = [satisfied(s, r) for s, r in spec if s is not None]
    return round(sum(met) / len(met), 4) if met else None


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(_dump(r) + "\n" for r in rows), encoding="utf-8")


def build_world(cfg: WorldConfig, out_dir: Path) -> World:
    """Generate the world and write its files into ``out_dir`` (created if needed)."""
    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ents = build_entities(_rng(cfg, "entities"), cfg.n_people, cfg.n_places, cfg.n_venues, cfg.n_fake_people)
    prompts, tasks = make_prompts(cfg, ents)
    world = _make_world(cfg, ents, tasks, prompts)
    demos = make_demos(cfg, prompts, world.judge)
    held_out = set().union(*(prefix_keys(p["prompt"]) for p in prompts if p["split"] != "train"))
    corpus = {name: build_corpus(_rng(cfg, f"corpus-{name}"), ents,
                                 with_constraints(generators(cfg.fake_fraction), cfg.constraint_fraction,
                                                  _rng(cfg, f"corpus-constraints-{name}")), held_out, n)
              for name, n in (("train", cfg.corpus_chars), ("valid", int(cfg.corpus_chars * cfg.corpus_valid_frac)))}
    agreement = measure_agreement(world, cfg.agreement_items, cfg.seed) if cfg.agreement_items else float("nan")
    gold = measure_gold_agreement(world, cfg.agreement_items, cfg.seed) if cfg.agreement_items else float("nan")

    _write_jsonl(out_dir / "prompts.jsonl", prompts)
    _write_jsonl(out_dir / "demos.jsonl", demos)
    for name, docs in corpus.items():
        _write_jsonl(out_dir / f"corpus-{name}.jsonl", [{"text": d} for d in docs])
    hidden = {"config": to_dict(cfg), "entities": ents.to_dict(), "tasks": {k: t.to_dict() for k, t in tasks.items()}}
    (out_dir / "world.json").write_text(_dump(hidden) + "\n", encoding="utf-8")
    counts = {s: {f: sum(p["split"] == s and p["family"] == f for p in prompts) for f in FAMILIES} for s in SPLITS}
    manifest = {
        "config": to_dict(cfg),
        "counts": counts,
        "n_prompts": len(prompts),
        "n_users": {s: len({p["user_id"] for p in prompts if p["split"] == s}) for s in SPLITS},
        "n_demos": len(demos),
        "corpus": {name: {"docs": len(docs), "chars": sum(map(len, docs))} for name, docs in corpus.items()},
        "demos_ideal_fraction": round(sum(d["response"] == world.judge.ideal(d["prompt"]) for d in demos)
                                      / max(1, len(demos)), 4),
        "prompts_with_constraint": round(sum("constraint" in t.params for t in tasks.values())
                                         / max(1, len(tasks)), 4),
        "demos_following_constraint": _constraint_share(world, demos),
        "labeler_agreement_half_credit": round(agreement, 4),
        "gold_agreement_half_credit": round(gold, 4),
        "agreement_items": cfg.agreement_items,
        "agreement_definition": "half credit: two different simulated labelers (or one and the gold judge) rank "
                                "the same K=4 candidates; per response pair 1 if both order it the same way (both "
                                "tied counts), 0.5 if only one ties, 0 if opposite; mean over pairs (InstructGPT: "
                                "72.6 +- 1.5%). Not the reward stage's data/labeler_agreement, which leaves "
                                "tied pairs out",
        "score_range": list(SCORE_RANGE),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return world


def load_world(out_dir: Path) -> World:
    """The world written by :func:`build_world` (judge and labelers rebuilt from its config)."""
    out_dir = Path(out_dir)
    path = out_dir / "world.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: build the world first (tiller world --out {out_dir})")
    hidden = json.loads(path.read_text(encoding="utf-8"))
    cfg = from_dict(WorldConfig, hidden["config"], str(path))
    ents = Entities.from_dict(hidden["entities"])
    tasks = {k: Task.from_dict(t) for k, t in hidden["tasks"].items()}
    lines = (out_dir / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    prompts = [json.loads(line) for line in lines if line.strip()]
    return _make_world(cfg, ents, tasks, prompts)
