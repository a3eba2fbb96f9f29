"""`camseg train` and `camseg lr-find`, and the per-epoch table of the paper they print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from camseg.cli.app import (
    Command,
    NoProgressOpt,
    OptionalConfigOpt,
    QuietOpt,
    SetOpt,
    app,
    err,
    fmt_time,
    out,
    print_json,
    quiet_mode,
    shows_progress,
    user_errors,
)
from camseg.errors import CamsegError

_TABLE = "{:<10} {:>5} {:>10} {:>10} {:>10} {:>8} {:>8}"


def _print_epoch(row: Any) -> None:
    if out.is_terminal:  # overwrite what is left of fastai's progress bar on this line
        out.file.write("\r\x1b[2K")
    out.print(
        _TABLE.format(
            row.stage_name[:10],
            row.epoch,
            f"{row.train_loss:.6f}",
            f"{row.valid_loss:.6f}",
            f"{row.acc_camvid:.6f}",
            f"{row.miou:.4f}",
            fmt_time(row.seconds),
        ),
        highlight=False,
    )


def _print_stage(index: int, name: str, lr: Any) -> None:
    shown = f"{lr:.2e}" if isinstance(lr, float) else str(lr)
    out.print(Text.assemble((f"stage {index} ({name})", "bold"), f": lr {shown}"))
    out.print(
        _TABLE.format("stage", "epoch", "train_loss", "valid_loss", "acc_camvid", "miou", "time"),
    )


@app.command("train", cls=Command)
@user_errors
def train(
    config: OptionalConfigOpt = None,
    set_: SetOpt = None,
    name: Annotated[str | None, typer.Option(help="Run name (folder under output.dir).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run folder.")] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or cuda:N (sets train.device).")
    ] = None,
    no_progress: NoProgressOpt = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Only summary.json on stdout, at the end.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a U-Net with the staged recipe of a config (or resume a run)."""
    quiet_mode(quiet or json_out)
    set_ = [*(set_ or []), *([f"train.device={device}"] if device is not None else [])]
    from camseg.config.load import absolute_paths, load_config
    from camseg.core.runs import resumable_run
    from camseg.train.preflight import check_inputs

    if (config is None) == (resume is None):
        raise CamsegError("give either --config FILE (a new run) or --resume RUN_DIR")
    # mistakes are answered before torch and fastai are imported (5-10 s)
    if resume is not None:
        resumable_run(resume)
    else:
        cfg = load_config(config, set_ or [])
        resolved = absolute_paths(cfg)
        check_inputs(resolved.data, resolved.output.dir)
    from camseg.train.entry import TrainingInterrupted, describe_command, train_new, train_resume

    progress = shows_progress(no_progress, out)
    try:
        if resume is not None:
            out.print(Text.assemble("resuming ", (str(resume), "bold")), soft_wrap=True)
            summary = train_resume(
                resume,
                overrides=list(set_ or []),
                progress=progress,
                on_epoch=_print_epoch,
                on_start=lambda _, device: out.print(device, soft_wrap=True),
                on_stage=_print_stage,
            )
        else:
            summary = train_new(
                cfg,
                config_path=config,
                name=name,
                command=describe_command(
                    ["camseg", "train", "--config", str(config)]
                    + [a for item in set_ for a in ("--set", item)]
                    + (["--name", name] if name else [])
                ),
                progress=progress,
                on_epoch=_print_epoch,
                on_start=lambda d, device: (
                    out.print(Text.assemble("run folder ", (str(d), "bold")), soft_wrap=True),
                    out.print(device, soft_wrap=True),
                ),
                on_stage=_print_stage,
            )
    except TrainingInterrupted as e:
        err.print(f"camseg: {e}", soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    if json_out and summary.is_main:
        import json

        print_json(json.loads((summary.run_dir / "summary.json").read_text(encoding="utf-8")))
    if summary.epochs and summary.is_main:
        best = summary.best_acc_camvid
        shown = (
            "best acc_camvid n/a (no validation pixel was scored)"
            if best != best  # NaN
            else f"best acc_camvid {best:.4f} ({summary.best_stage}, epoch {summary.best_epoch})"
        )
        out.print(
            f"{shown}; {summary.epochs} epoch{'s' if summary.epochs != 1 else ''} in "
            f"{fmt_time(summary.seconds)}, "
            f"{summary.images_per_second:.1f} images/s; model: {summary.run_dir / 'model.pth'}",
            soft_wrap=True,
        )


@app.command("lr-find", cls=Command)
@user_errors
def lr_find(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML config file or preset (default: half.yaml)."),
    ] = None,
    set_: SetOpt = None,
    stage: Annotated[int, typer.Option(help="Stage index whose freeze state to use.")] = 0,
    start_from: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Run folder or checkpoint to start from (needed for --stage 1 and later: the "
            "weights the earlier stages trained).",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Name of the output: it goes to output.dir/NAME-lr_find (-2, ...)."),
    ] = None,
    no_progress: NoProgressOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run fastai's learning-rate finder for a stage of a config (paper Fig. 9/10)."""
    quiet_mode(quiet)
    import json

    from camseg.config.load import load_config
    from camseg.train.preflight import check_inputs

    if config is None:
        config = Path("half.yaml")
        err.print("no --config: using the paper's first phase, half.yaml")
    cfg = load_config(config, set_ or [])
    check_inputs(cfg.data, cfg.output.dir)  # before torch and fastai are imported (5-10 s)
    from camseg.train.entry import lr_find as find
    from camseg.train.entry import run_name

    progress = shows_progress(no_progress, out)

    def on_iter(done: int, total: int, loss: float) -> None:  # no bar: a line every 10 s
        err.print(f"lr_find: iteration {done}/{total}, smoothed loss {loss:.4f}")

    out_dir, found = find(
        cfg,
        stage,
        cfg.output.dir,
        run_name(name, cfg.output.name, config_path=config),
        progress,
        start_from,
        on_iter=None if progress else on_iter,
    )
    for key, why in found.missing.items():
        err.print(f"camseg: note: lr_find could not compute the {key} suggestion: {why}")
    out.print(json.dumps(found.lrs, indent=2))
    out.print(
        f"plot: {out_dir / 'lr_find.png'}; suggestions: {out_dir / 'lr_find.json'}",
        soft_wrap=True,
    )
