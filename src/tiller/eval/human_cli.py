"""``tiller eval --judge app``: which policies and prompts, sampling their answers, and the printed table;
the evaluation itself is :mod:`tiller.eval.human`."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from tiller.config import ConfigError
from tiller.data import read_records
from tiller.eval.human import (
    HEADLINE_FLAGS,
    HumanEval,
    already_imported,
    human_eval,
    shown_flags,
    write_human_report,
)
from tiller.eval.plots import finite, title
from tiller.eval.results import Estimate, WinRate


def named_policy(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (NAME, PATH); a plain path is named by its folder: ``runs/x/policy-r3`` -> policy-r3."""
    name, eq, path = spec.partition("=")
    if eq and name.strip() and not re.search(r"[/\\]", name):
        return name.strip(), path
    return Path(spec.rstrip("/\\")).name or spec, spec


def policy_specs(policy: str, baseline: str, also: list[str]) -> dict[str, str]:
    """name -> folder of every policy compared, the policy first and the baseline second."""
    out: dict[str, str] = {}
    for spec in [policy, baseline, *also]:
        name, path = named_policy(spec)
        if name in out:
            raise ConfigError(f"two policies are named {name!r} ({out[name]} and {path}): name them, NAME=PATH")
        out[name] = path
    return out


def default_batch(run_name: str) -> str:
    """``human-eval-RUN``, made a valid batch name (letters, digits, '.', '_', '-')."""
    return "human-eval-" + re.sub(r"[^A-Za-z0-9._-]", "-", run_name)[:100]


def held_out_prompts(prompts_file: Path | None, world_dir: Path, n_per_family: int, n_prompts: int | None,
                     seed: int) -> list[Any]:
    """``prompts_file``'s PromptRecords (only the ``test`` ones if it gives splits), else the world's test
    prompts (``n_per_family`` per family); at most ``n_prompts`` of them, a seeded sample in file order."""
    from tiller.eval.evaluate import test_prompts

    if prompts_file is not None:
        recs = list(read_records(prompts_file, "prompt"))
        if any(r.split for r in recs):
            recs = [r for r in recs if r.split == "test"]
        prompts: list[Any] = [r.prompt for r in recs]
    else:
        from tiller.world import load_world

        prompts, _ = test_prompts(load_world(world_dir), n_per_family, seed)
    if n_prompts is not None and 0 < n_prompts < len(prompts):
        prompts = [prompts[i] for i in sorted(random.Random(seed).sample(range(len(prompts)), n_prompts))]
    if not prompts:
        raise ConfigError(f"no held-out prompts in {prompts_file or world_dir} (a file with splits needs 'test' ones)")
    return prompts


def _ci(e: WinRate | Estimate | None, pct: bool = True) -> str:
    v = None if e is None else finite(e.rate if isinstance(e, WinRate) else e.value)
    if e is None or v is None:
        return "–"
    f = "{:.1%}" if pct else "{:.2f}"
    return f"{f.format(v)} [{f.format(finite(e.lo) or 0.0)}, {f.format(finite(e.hi) or 0.0)}]"


def human_lines(h: HumanEval) -> list[str]:
    """The results as a plain table: one row per policy."""
    flags = [f for f in shown_flags(h) if f in HEADLINE_FLAGS]
    lines = [f"human evaluation, batch {h.batch}: {h.n_items} prompts, {h.n_labels} rankings by "
             f"{len(h.labelers)} labelers; win rates against {h.baseline} (ties count half), 95% intervals",
             f"{'policy':<20}{'win rate':<24}{'Likert 1-7':<22}{'Elo':<22}" + "".join(f"{title(f):<22}" for f in flags)]
    for p in h.policies:
        elo = f"{h.elo[p]:.0f}" if p in h.elo else "–"
        if p in h.elo_intervals and p != h.baseline:
            elo += f" [{h.elo_intervals[p][0]:.0f}, {h.elo_intervals[p][1]:.0f}]"
        win = "baseline" if p == h.baseline else _ci(h.win_rates.get(p))
        lines.append(f"{p[-19:]:<20}{win:<24}{_ci(h.likert.get(p), pct=False):<22}{elo:<22}"
                     + "".join(f"{_ci(h.flags.get(p, {}).get(f)):<22}" for f in flags))
    return [line.rstrip() for line in lines]


def run_human_eval(policies: dict[str, str], baseline: str, prompts: list[Any], db: str, batch: str, out: Path,
                   overlap: int = 1, seed: int = 0, poll_s: float = 5.0, timeout_s: float | None = None,
                   temperature: float = 0.7) -> Path:
    """``tiller eval --judge app``: sample every policy's answers (unless the batch is already imported), wait
    for the labelers, print the table and write the page; returns its path."""
    from tiller.eval.evaluate import answer

    answers: dict[str, list[str]] = {}
    if not already_imported(db, batch, out):
        families = [""] * len(prompts)
        for name, path in policies.items():
            print(f"sampling {len(prompts)} answers from {name} ({path}) ...", flush=True)
            answers[name] = answer(path, prompts, families, temperature, seed).texts
    h = human_eval(db, batch, prompts, answers, baseline, out, overlap=overlap, seed=seed, poll_s=poll_s,
                   timeout_s=timeout_s)
    for line in human_lines(h):
        print(line)
    return write_human_report(h, out)


__all__ = ["default_batch", "held_out_prompts", "human_lines", "named_policy", "policy_specs", "run_human_eval"]
