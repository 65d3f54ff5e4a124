"""``tiller world``: build the embedded default world into a folder and print what it holds.

Mount in ``tiller.cli`` as, e.g.::

    @app.command("world")
    def world(out: Path = typer.Option(Path("runs/default/world")), config: Path | None = None,
              set_: list[str] = typer.Option([], "--set"), force: bool = False):
        world_cmd(out, config, set_, force)
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tiller.config import ConfigError, load_config, to_dict
from tiller.world.build import FILES, World, build_world, load_world
from tiller.world.config import FAMILIES, WorldConfig


def summary(manifest: dict) -> str:
    """A few lines: prompts per family and split, corpus size, labeler agreement."""
    counts = manifest["counts"]
    lines = [f"{'family':<12}" + "".join(f"{s:>7}" for s in counts)]
    for fam in FAMILIES:
        lines.append(f"{fam:<12}" + "".join(f"{counts[s][fam]:>7}" for s in counts))
    lines.append(f"{'total':<12}" + "".join(f"{sum(counts[s].values()):>7}" for s in counts))
    c = manifest["corpus"]
    lines.append(f"demos {manifest['n_demos']} ({manifest['demos_ideal_fraction']:.0%} ideal), corpus {c['train']['chars']:,} chars train "
                 f"({c['train']['docs']} docs) + {c['valid']['chars']:,} valid")
    lines.append(f"labeler agreement (half credit for ties) {manifest['labeler_agreement_half_credit']:.1%} "
                 f"between labelers, {manifest['gold_agreement_half_credit']:.1%} with gold "
                 f"({manifest['agreement_items']} K=4 items)")
    return "\n".join(lines)


def world_cmd(out: Path, config: Path | None = None, overrides: list[str] | None = None,
              force: bool = False) -> World:
    """Build (or reuse, when the same config already built it) the world in ``out``; print a summary."""
    try:
        cfg = load_config(WorldConfig, config, overrides or [])
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    out = Path(out)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and not force:
        old = json.loads(manifest_path.read_text())
        if old.get("config") == to_dict(cfg) and all((out / f).is_file() for f in FILES):
            typer.echo(f"world in {out} is up to date (use --force to rebuild)")
            typer.echo(summary(old))
            return load_world(out)
        typer.echo(f"error: {out} holds a world built with another config; pass --force to overwrite it", err=True)
        raise typer.Exit(2)
    world = build_world(cfg, out)
    typer.echo(f"wrote world (seed {cfg.seed}) to {out}")
    typer.echo(summary(json.loads(manifest_path.read_text())))
    return world
