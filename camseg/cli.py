"""The `camseg` command line: parses arguments, calls the library, prints for the user.

The only module that imports typer, prints or exits. A `CamsegError` from the library becomes
one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from camseg.errors import CamsegError

app = typer.Typer(
    help="Train and use U-Net models for semantic segmentation of urban driving scenes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)
data_app = typer.Typer(help="Check, prepare, download and generate datasets.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[
    Path,
    typer.Option("--config", "-c", help="YAML config file or preset name (camseg config list)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a key: --set data.batch_size=4 (value is YAML)."),
]


def _user_errors(fn: F) -> F:
    """Turn CamsegError into one stderr line and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CamsegError as e:
            err.print(f"camseg: error: {e}", markup=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    # fastai's own import-time deprecation chatter is not something a user can act on
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    warnings.filterwarnings("ignore", message="The 'mode.chained_assignment' option")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, show_time=False)],
        force=True,
    )


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise CamsegError(f"--size {text!r}: expected HxW, e.g. 96x128")
    return int(m.group(1)), int(m.group(2))


# ---- config -------------------------------------------------------------------------------


@config_app.command("list")
def config_list() -> None:
    """List the presets shipped with camseg (use them as --config NAME.yaml from any folder)."""
    from camseg.config import PRESETS, preset_description, preset_names

    table = Table("preset", "what", title=f"presets in {PRESETS}")
    for name in preset_names():
        table.add_row(f"{name}.yaml", preset_description(name))
    out.print(table)


@config_app.command("show")
@_user_errors
def config_show(config: ConfigOpt, set_: SetOpt = None) -> None:
    """Print the resolved config (defaults + file + --set) as YAML."""
    from camseg.config import dump_config, load_config

    out.print(dump_config(load_config(config, set_ or [])), markup=False, end="", soft_wrap=True)


# ---- data ---------------------------------------------------------------------------------


@data_app.command("check")
@_user_errors
def data_check(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="YAML config file or preset name (camseg config list)."
        ),
    ] = None,
    set_: SetOpt = None,
    root: Annotated[Path | None, typer.Option(help="Dataset folder (instead of a config).")] = None,
    layout: Annotated[str, typer.Option(help="Layout of --root: camvid or camseq01.")] = "camvid",
) -> None:
    """Check a dataset: pairs, sizes, label values, codes, valid.txt, unreadable files."""
    from camseg.config import load_config
    from camseg.data import check_dataset, find_files

    if config is None and root is None:
        raise CamsegError("give --config FILE or --root DIR")
    overrides = list(set_ or [])
    if root is not None:
        overrides += [f"data.root={root}", f"data.layout={layout}"]
    cfg = load_config(config, overrides)
    if cfg.data.layout == "synthetic" and not (cfg.data.root / "images").is_dir():
        # find_files would generate the scenes there; a check reads, it never writes
        s = cfg.data.synthetic
        raise CamsegError(
            f"data.root {cfg.data.root}: no synthetic scenes there yet (no images/), and a check "
            f"writes nothing; make them with camseg data synth --out {cfg.data.root} --n {s.n} "
            f"--size {s.size[0]}x{s.size[1]} --seed {s.seed} --valid-fraction "
            f"{s.valid_fraction:g} (training on the synthetic layout also makes them)"
        )
    files = find_files(cfg.data)
    report = check_dataset(files)
    out.print(
        f"[bold]{files.root}[/] ({files.layout}): {report.n_images} images, "
        f"{report.n_train} train / {report.n_valid} valid, {len(report.codes)} classes",
        soft_wrap=True,
    )
    table = Table("index", "class", "pixel share", title="Pixels per class", min_width=40)
    for i, (name, share) in enumerate(report.pixel_shares().items()):
        table.add_row(str(i), name, f"{share:.4f}")
    out.print(table)
    if not report.ok:
        for problem in report.problems:
            err.print(f"camseg: problem: {problem}", markup=False, soft_wrap=True)
        err.print(f"camseg: error: {len(report.problems)} problem(s) in {files.root}", markup=False)
        raise typer.Exit(2)
    out.print("[green]dataset OK[/]")


@data_app.command("prepare")
@_user_errors
def data_prepare(
    src: Annotated[
        Path, typer.Argument(help="CamSeq01 folder (flat, or CamSeq01_Raw + _Labeled).")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="New folder for the camvid layout.")],
    valid: Annotated[Path | None, typer.Option(help="File listing the validation frames.")] = None,
    valid_fraction: Annotated[
        float, typer.Option(help="Without --valid: this fraction of the last frames validates.")
    ] = 0.2,
    gap: Annotated[
        int | None,
        typer.Option(
            help="Without --valid: frames left out between train and valid, near-duplicates "
            "of the first valid frames. Default: 1 per 20 frames, rounded up, fewer if needed to "
            "keep a train frame."
        ),
    ] = None,
    unknown_as: Annotated[
        str | None, typer.Option(help="Class for colours not in the table (e.g. Void).")
    ] = None,
) -> None:
    """Convert a CamSeq01 download (colour labels) into the camvid layout, once."""
    from camseg.data.prepare import prepare_camseq01

    def frames(names: tuple[str, ...]) -> str:
        # all names, or the ends and the count: one line even for a 101-frame video
        if len(names) <= 4:
            return ", ".join(names)
        return f"{names[0]}, {names[1]}, ..., {names[-1]} ({len(names)} frames)"

    res = prepare_camseq01(
        src, out_dir, valid=valid, valid_fraction=valid_fraction, gap=gap, unknown_as=unknown_as
    )
    out.print(
        f"wrote {res.n_images} frames ({res.n_images - res.n_valid} train / {res.n_valid} valid) "
        f"to {res.out}",
        soft_wrap=True,
    )
    gap_note = f"; left out as the gap: {frames(res.gap_names)}" if res.gap_names else ""
    out.print(f"valid: {frames(res.valid_names)}{gap_note}", soft_wrap=True)


@data_app.command("synth")
@_user_errors
def data_synth(
    out_dir: Annotated[Path, typer.Option("--out", help="New folder for the scenes.")],
    n: Annotated[int, typer.Option("--n", help="Number of scenes.")] = 200,
    size: Annotated[str, typer.Option(help="Scene size HxW.")] = "96x128",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    valid_fraction: Annotated[float, typer.Option(help="Fraction put in valid.txt.")] = 0.2,
) -> None:
    """Render synthetic street scenes labelled with the 32 CamVid classes."""
    from camseg.data.synth import generate

    generate(out_dir, n=n, size=_size(size), seed=seed, valid_fraction=valid_fraction)
    out.print(f"wrote {n} synthetic scenes to {out_dir}")


@data_app.command("download")
@_user_errors
def data_download(
    name: Annotated[str, typer.Argument(help="camvid, camvid-tiny or camseq01.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Parent folder for the data.")] = Path(
        "data"
    ),
) -> None:
    """Download a dataset (needs internet) into the camvid layout."""
    from camseg.data.prepare import download

    path = download(name, out_dir)
    out.print(f"{name} is ready at {path}")


_TABLE = "{:<10} {:>5} {:>10} {:>10} {:>10} {:>8} {:>8}"


def _fmt_time(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


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
            _fmt_time(row.seconds),
        ),
        markup=False,
        highlight=False,
    )


def _print_stage(index: int, name: str, lr: Any) -> None:
    shown = f"{lr:.2e}" if isinstance(lr, float) else str(lr)
    out.print(f"[bold]stage {index} ({name})[/]: lr {shown}")
    out.print(
        _TABLE.format("stage", "epoch", "train_loss", "valid_loss", "acc_camvid", "miou", "time"),
        markup=False,
    )


@app.command("train")
@_user_errors
def train(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="YAML config file or preset name (camseg config list)."
        ),
    ] = None,
    set_: SetOpt = None,
    name: Annotated[str | None, typer.Option(help="Run name (folder under output.dir).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run folder.")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Train a U-Net with the staged recipe of a config (or resume a run)."""
    from camseg.config import load_config
    from camseg.train import TrainingInterrupted, describe_command, train_new, train_resume

    if (config is None) == (resume is None):
        raise CamsegError("give either --config FILE (a new run) or --resume RUN_DIR")
    progress = not no_progress and out.is_terminal
    try:
        if resume is not None:
            out.print(f"resuming [bold]{resume}[/]")
            summary = train_resume(
                resume,
                overrides=list(set_ or []),
                progress=progress,
                on_epoch=_print_epoch,
                on_stage=_print_stage,
            )
        else:
            summary = train_new(
                load_config(config, set_ or []),
                config_path=config,
                name=name,
                command=describe_command(
                    ["camseg", "train", "--config", str(config)]
                    + [a for item in set_ or [] for a in ("--set", item)]
                    + (["--name", name] if name else [])
                ),
                progress=progress,
                on_epoch=_print_epoch,
                on_start=lambda d: out.print(f"run folder [bold]{d}[/]"),
                on_stage=_print_stage,
            )
    except TrainingInterrupted as e:
        err.print(f"camseg: {e}", markup=False, soft_wrap=True)
        raise typer.Exit(130) from None
    if summary.epochs and summary.is_main:
        best = summary.best_acc_camvid
        shown = (
            "best acc_camvid n/a (no validation pixel was scored)"
            if best != best  # NaN
            else f"best acc_camvid {best:.4f} ({summary.best_stage}, epoch {summary.best_epoch})"
        )
        out.print(
            f"{shown}; {summary.epochs} epochs in {_fmt_time(summary.seconds)}, "
            f"{summary.images_per_second:.1f} images/s; model: {summary.run_dir / 'model.pth'}",
            soft_wrap=True,
        )


@app.command("lr-find")
@_user_errors
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
    name: Annotated[str | None, typer.Option(help="Output folder name under output.dir.")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Run fastai's learning-rate finder for a stage of a config (paper Fig. 9/10)."""
    import json

    from camseg.config import load_config
    from camseg.train import lr_find as find
    from camseg.train import run_name

    if config is None:
        config = Path("half.yaml")
        err.print("no --config: using the paper's first phase, half.yaml", markup=False)
    cfg = load_config(config, set_ or [])
    progress = not no_progress and out.is_terminal
    out_dir, suggestions = find(
        cfg, stage, cfg.output.dir, run_name(cfg, config, name), progress, start_from
    )
    out.print(json.dumps(suggestions, indent=2), markup=False)
    out.print(f"plot: {out_dir / 'lr_find.png'}; suggestions: {out_dir / 'lr_find.json'}")


RunOpt = Annotated[Path | None, typer.Option("--run", help="Run folder (uses its model.pth).")]
ModelOpt = Annotated[
    Path | None, typer.Option("--model", help="model.pth or a checkpoint file instead of --run.")
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]


def _model_source(run: Path | None, model: Path | None) -> Path:
    """--run or --model; with neither, the newest finished run under ./runs (said on stderr)."""
    if run is not None and model is not None:
        raise CamsegError("give either --run RUN_DIR or --model model.pth, not both")
    source = run if run is not None else model
    if source is None:
        from camseg.runs import latest_run

        source = latest_run(Path("runs")).dir
        err.print(f"using the newest finished run: {source}", markup=False, soft_wrap=True)
    if not source.exists():
        raise CamsegError(f"{source}: no such file or folder")
    return source


@app.command("evaluate")
@_user_errors
def evaluate(
    run: RunOpt = None,
    model: ModelOpt = None,
    data: Annotated[
        Path | None, typer.Option(help="Another dataset folder with the same classes.")
    ] = None,
    layout: Annotated[str | None, typer.Option(help="Layout of --data (camvid).")] = None,
    split: Annotated[str, typer.Option(help="valid, train or all.")] = "valid",
    size: Annotated[
        str, typer.Option(help="model (the training size), native (labels at full size) or HxW.")
    ] = "model",
    tta: Annotated[bool, typer.Option("--tta", help="Flip test-time augmentation.")] = False,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 8,
    precision: Annotated[
        str,
        typer.Option(
            help="train (as training validated, recorded in the model file; fp32 where that "
            "cannot run here), fp32, fp16 (CUDA) or bf16."
        ),
    ] = "train",
) -> None:
    """Score a trained model on a dataset split: acc_camvid, pixel accuracy, mIoU, per class."""
    from camseg.evaluate import REFERENCES
    from camseg.evaluate import evaluate as run_eval

    if split not in ("valid", "train", "all"):
        raise CamsegError(f"--split {split!r}: choose valid, train or all")
    if batch_size < 1:
        raise CamsegError(f"--batch-size must be at least 1, got {batch_size}")
    result = run_eval(
        _model_source(run, model),
        data=data,
        layout=layout,
        split=split,  # type: ignore[arg-type]
        size=size,
        tta=tta,
        device=device,
        batch_size=batch_size,
        precision=precision,  # type: ignore[arg-type]
    )
    ev = result.evaluated
    if ev["precision_note"]:
        err.print(f"camseg: note: {ev['precision_note']}", markup=False, soft_wrap=True)
    table = Table(
        "class",
        "IoU",
        "precision",
        "recall",
        "pixel share",
        title=f"{ev['data']} / {ev['split']} ({ev['n_images']} images, {ev['precision']})",
    )
    for row in result.per_class:
        if row["present"] and row["scored"]:
            table.add_row(
                row["class"],
                *(f"{row[k]:.4f}" for k in ("iou", "precision", "recall", "pixel_share")),
            )
    out.print(table)
    s = result.scores
    out.print(
        f"acc_camvid [bold]{s.acc_camvid:.4f}[/]  pixel accuracy (Void counted) "
        f"{s.pixel_acc:.4f}  mIoU {s.miou:.4f}",
        soft_wrap=True,
    )
    if result.without_tta is not None:
        w = result.without_tta
        out.print(
            f"TTA (flip) changed acc_camvid by {s.acc_camvid - w.acc_camvid:+.4f}, "
            f"mIoU by {s.miou - w.miou:+.4f} (without: {w.acc_camvid:.4f} / {w.miou:.4f})",
            soft_wrap=True,
        )
    for ref in REFERENCES:
        out.print(
            f"  for reference, not comparable: {ref['acc_camvid']:.4f} {ref['source']} "
            f"({ref['setting']})",
            soft_wrap=True,
            style="dim",
        )
    out.print(f"wrote {result.out_dir}", soft_wrap=True)


@app.command("predict")
@_user_errors
def predict(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.")],
    run: RunOpt = None,
    model: ModelOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default RUN_DIR/predictions).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per batch (default: 16 on CUDA, 1 on CPU).")
    ] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Flip test-time augmentation.")] = False,
    device: DeviceOpt = "auto",
    precision: Annotated[
        str,
        typer.Option(
            help="auto (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32), fp32, bf16 or "
            "fp16 (CUDA)."
        ),
    ] = "auto",
    format_: Annotated[
        str, typer.Option("--format", help="Comma list of index, color, overlay.")
    ] = "index,color,overlay",
    json_lines: Annotated[bool, typer.Option("--json", help="A JSON line per image.")] = False,
) -> None:
    """Write segmentation masks for images at their own resolution."""
    import json

    from rich.progress import Progress

    from camseg.predict import expand_inputs
    from camseg.predict import predict as run_predict

    source = _model_source(run, model)
    if out_dir is None:
        out_dir = (source if source.is_dir() else source.parent) / "predictions"
    formats = tuple(f.strip() for f in format_.split(",") if f.strip())
    expanded = expand_inputs(inputs)
    n = len(expanded.images)
    if expanded.own_outputs:
        err.print(
            f"camseg: note: left out {len(expanded.own_outputs)} file(s) that camseg predict "
            f"wrote earlier (e.g. {expanded.own_outputs[0]}); name a file to segment it",
            markup=False,
            soft_wrap=True,
        )
    with Progress(console=err, disable=n <= 5 or json_lines or not err.is_terminal) as bar:
        task = bar.add_task("predicting", total=n)

        def on_image(record: dict | None) -> None:
            bar.advance(task)
            if record is not None and json_lines:
                out.print(json.dumps(record), markup=False, highlight=False, soft_wrap=True)

        result = run_predict(
            inputs,
            source,
            out_dir,
            batch_size=batch_size,
            tta=tta,
            device=device,
            precision=precision,  # type: ignore[arg-type]
            formats=formats,
            on_image=on_image,
        )
    if result.renamed:
        shown = ", ".join(f"{path} -> {name}" for path, name in result.renamed[:3])
        more = f" and {len(result.renamed) - 3} more" if len(result.renamed) > 3 else ""
        err.print(
            f"camseg: note: {len(result.renamed)} input(s) share a name with an earlier one; "
            f"their outputs are named {shown}{more}",
            markup=False,
            soft_wrap=True,
        )
    for path, reason in result.skipped:
        err.print(f"camseg: skipped {path}: {reason}", markup=False, soft_wrap=True)
    if not json_lines:
        out.print(f"wrote {len(result.written)} image(s) to {out_dir}", soft_wrap=True)
    if result.skipped:
        err.print(
            f"camseg: error: {len(result.skipped)} of {n} input(s) could not be read", markup=False
        )
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="camseg")


if __name__ == "__main__":
    sys.exit(main())
