"""Ablations of one round's RL on a finished `tiller run` folder: same SFT model, same RM, one setting changed.

    python scripts/ablate_rl.py --run runs/default --round 3 \
        base= ptx0=ppo.ptx_coef=0 it24=ppo.iterations=24

Each NAME=OVERRIDES (comma-separated key=value of the run's config, `ppo.` keys and `seed=N`) trains the
round's PPO-ptx again from the run's SFT model against the run's `rm-rN` (as `tiller run` does, so `base=`
with no override reproduces the run's own policy) into RUN/ablations/rN-NAME, then judges it against SFT on
the run's held-out prompts: the gold win rate with its wins/ties/losses, the win rate restricted to each
aspect, and InstructGPT's metadata. Prints one markdown table (issue #17: every change to RL is justified by
the per-aspect numbers of an ablation, not by the overall win rate alone).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from tiller.config import load_config
from tiller.eval.evaluate import evaluate_policy
from tiller.pipeline import RunConfig, seeded
from tiller.stages.ppo import train_ppo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished tiller run folder")
    ap.add_argument("--round", type=int, default=3)
    ap.add_argument("arms", nargs="+", help="NAME=key=value,key=value (NAME= for the run's own settings)")
    args = ap.parse_args()
    rd = Path(args.run)
    base = json.loads((rd / "run-config.json").read_text())
    rows, cache = [], {}
    for arm in args.arms:
        name, _, spec = arm.partition("=")
        over = [s for s in spec.split(",") if s]
        acfg = seeded(load_config(RunConfig, None, over, base=base))
        out = rd / "ablations" / f"r{args.round}-{name}"
        ppo = acfg.ppo
        if args.round > 1 and acfg.later_round_iterations:
            ppo = replace(ppo, iterations=acfg.later_round_iterations)
        train_ppo(ppo, str(rd / "sft"), str(rd / "sft"), rd / "world/prompts.jsonl", out, rd / "ablations/logs",
                  rm_path=str(rd / f"rm-r{args.round}"), ptx_corpus=rd / "world/corpus-train.jsonl")
        res = evaluate_policy(str(out), rd / "world", baseline=str(rd / "sft"), n_per_family=acfg.eval.n_per_family,
                              seed=acfg.eval.seed, temperature=acfg.eval.temperature, cache=cache)
        curve = json.loads((out / "curve.json").read_text()) if (out / "curve.json").is_file() else []
        rows.append((name, spec or "(the run's)", res, curve[-1] if curve else {}))
        (out / "ablation.json").write_text(json.dumps({**res.to_json(), "answers": res.samples}, indent=2, default=str))
    print_table(rows)


def _pct(d: dict | None, key: str = "rate") -> str:
    return "-" if not d else f"{d[key]:.1%} [{d['lo']:.1%}, {d['hi']:.1%}]"


def print_table(rows) -> None:
    aspects = ("helpful", "truthful", "form", "constraint")
    meta = ("fails_instruction", "follows_constraints", "hallucination", "harmful", "over_refusal")
    print("| arm | overrides | vs SFT | wins / ties / losses | " + " | ".join(f"{a} (win)" for a in aspects)
          + " | " + " | ".join(meta) + " | KL / RM score (last eval) |")
    print("|" + "---|" * (5 + len(aspects) + len(meta)))
    for name, spec, res, last in rows:
        ov = res.win_rate["overall"]
        cells = [name, f"`{spec}`", _pct(ov), f"{ov['wins']:.0%} / {ov['ties']:.0%} / {ov['losses']:.0%}"]
        cells += [f"{res.aspect_win_rate[a]['rate']:.1%}" if a in res.aspect_win_rate else "-" for a in aspects]
        cells += [f"{res.metadata[m]['value']:.1%}" if m in res.metadata else "-" for m in meta]
        kl, rm = last.get("kl"), last.get("rm_score")
        cells.append(f"{kl:.2f} / {rm:.2f}" if kl is not None and rm is not None else "-")
        print("| " + " | ".join(cells) + " |")
    if rows:
        res = rows[0][2]
        base = res.baseline_metadata
        print("\nSFT: " + ", ".join(f"{m} {base[m]['value']:.1%}" for m in meta if m in base))


if __name__ == "__main__":
    main()
