"""``tiller control``: run deep RL from human preferences on a control task, and report on it.

``tiller control run --run NAME [--config FILE] [key=value ...]`` trains into ``runs/NAME/control`` (metrics in
``runs/NAME/logs``) and resumes after a kill; ``tiller control report --run NAME [--baseline OTHER]`` draws the
page. The heavy modules (gymnasium, MuJoCo, Stable-Baselines3) are imported only when a command runs, so
``tiller --help`` stays fast and a missing ``control`` extra is one clear line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from tiller.config import ConfigError, help_lines, load_config
from tiller.runs import run_dir

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(help="Deep RL from human preferences on MuJoCo control tasks (Christiano et al. 2017).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

Run = Annotated[str, typer.Option("--run", "-r", help="run name (folder under runs/) or path")]
EXTRA = "tiller control needs the control extra: pip install -c constraints.txt -e '.[control]'"


def user_errors(fn: F) -> F:
    """Errors a user can fix (bad config, missing extra or run, people too slow) -> one line, exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] in ("gymnasium", "mujoco", "stable_baselines3"):
                typer.echo(f"error: {EXTRA} ({e.name} is missing)", err=True)
                raise typer.Exit(2) from None
            raise
        except (ConfigError, FileNotFoundError, TimeoutError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


class RunCommand(typer.core.TyperCommand):
    """``run --help`` lists ControlConfig's keys (read when help is shown)."""

    @property
    def epilog(self) -> str:  # type: ignore[override]
        from tiller.control.config import AppSourceConfig, ControlConfig, PPOSettings
        from tiller.control.predictor import PredictorConfig

        lines = help_lines(ControlConfig)
        for prefix, cls in (("predictor", PredictorConfig), ("ppo", PPOSettings), ("app", AppSourceConfig)):
            lines += [f"{prefix}.{line}" for line in help_lines(cls)]
        return "Config keys (YAML file or key=value, dotted for sections):\n\n" + "\n\n".join(f"  {x}" for x in lines)

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        pass


def load_control_config(config: Path | None, overrides: list[str]) -> Any:
    """ControlConfig from YAML + overrides; the predictor's own checks (ValueError) become ConfigErrors."""
    from tiller.control.config import ControlConfig

    try:
        return load_config(ControlConfig, config, overrides)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None


@app.command("run", cls=RunCommand)
@user_errors
def run_cmd(run: Run = "default",
            config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")] = None,
            force: Annotated[bool, typer.Option("--force", help="start again even if finished or checkpointed")]
            = False,
            overrides: Annotated[list[str] | None, typer.Argument(help="config overrides, key=value")] = None) -> None:
    """Train a policy on a reward learned from clip comparisons (oracle or people), or on the true reward
    (reward=true, the baseline). Rerun the same command after a kill and it continues from its checkpoint."""
    cfg = load_control_config(config, overrides or [])
    from tiller.control.loop import train_control

    rd = run_dir(run)
    metrics = train_control(cfg, rd / "control", force=force, log_dir=rd / "logs")
    typer.echo(f"control run in {rd / 'control'}")
    for k, v in metrics.items():
        typer.echo(f"  {k:<28} {v:.4f}" if isinstance(v, float) else f"  {k:<28} {v}")


@app.command("report")
@user_errors
def report_cmd(run: Run = "default",
               baseline: Annotated[str | None, typer.Option(
                   help="another run to draw beside it, e.g. the same settings with reward=true")] = None,
               out: Annotated[Path | None, typer.Option(help="folder of the page (default runs/NAME/control-report)")]
               = None) -> None:
    """The learning curves (true return against steps and labels, predictor accuracy) and clip strips."""
    from tiller.control.report import write_report

    runs = [run_dir(run)] + ([run_dir(baseline)] if baseline else [])
    page = write_report(runs, out or run_dir(run) / "control-report")
    typer.echo(f"report: {page}")


@app.command("summary")
@user_errors
def summary_cmd(folder: Annotated[Path, typer.Argument(
                    help="measurement folder: one run folder per setting and seed (learned-s0, true-s0, ...)")],
                out: Annotated[Path | None, typer.Option(help="folder of the outputs (default DIR/summary)")]
                = None) -> None:
    """Each setting over its seeds (finals, mean, spread) and against true-reward PPO at the issue's 80% bar:
    summary.json, summary.md (the table) and summary.html with plots."""
    from tiller.control.summary import write_summary

    root = folder if folder.is_dir() else run_dir(folder)
    page, table, summary = write_summary(root, out)
    if summary["skipped"]:
        typer.echo(f"skipped (no finished run): {', '.join(summary['skipped'])}")
    typer.echo(table)
    typer.echo(f"summary: {page}")
