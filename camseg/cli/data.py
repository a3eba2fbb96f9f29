"""`camseg config ...` and `camseg data ...`: inspect configs, check, prepare, download and
generate datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from camseg.cli.app import (
    Command,
    ConfigOpt,
    OptionalConfigOpt,
    QuietOpt,
    SetOpt,
    choices,
    config_app,
    data_app,
    err,
    out,
    quiet_mode,
    user_errors,
)
from camseg.config.schema import Layout
from camseg.config.values import parse_size
from camseg.errors import CamsegError

LayoutChoice = choices("LayoutChoice", Layout)


@config_app.command("list", cls=Command)
def config_list(quiet: QuietOpt = False) -> None:
    """List the presets shipped with camseg (use them as --config NAME.yaml from any folder)."""
    quiet_mode(quiet)
    from camseg.config.load import PRESETS, preset_description, preset_names

    table = Table("preset", "what", title=f"presets in {PRESETS}")
    for name in preset_names():
        table.add_row(f"{name}.yaml", preset_description(name))
    out.print(table)


@config_app.command("show", cls=Command)
@user_errors
def config_show(config: ConfigOpt, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Print the resolved config (defaults + file + --set) as YAML."""
    quiet_mode(quiet)
    from camseg.config.load import dump_config, load_config

    out.print(dump_config(load_config(config, set_ or [])), end="", soft_wrap=True)


@data_app.command("check", cls=Command)
@user_errors
def data_check(
    config: OptionalConfigOpt = None,
    set_: SetOpt = None,
    root: Annotated[Path | None, typer.Option(help="Dataset folder (instead of a config).")] = None,
    layout: Annotated[LayoutChoice, typer.Option(help="Layout of --root.")] = LayoutChoice.camvid,  # type: ignore[attr-defined]
    quiet: QuietOpt = False,
) -> None:
    """Check a dataset: pairs, sizes, label values, codes, valid.txt, unreadable files."""
    quiet_mode(quiet)
    from camseg.config.load import load_config
    from camseg.data import check_dataset, find_files
    from camseg.data.layouts import CHECK_OPTIONS, CONFIG_OPTIONS

    if config is None and root is None:
        raise CamsegError("give --config FILE or --root DIR")
    cfg = load_config(config, set_ or [])
    if root is not None:
        data = cfg.data.model_copy(update={"root": root, "layout": layout.value})
        cfg = cfg.model_copy(update={"data": data})
    if cfg.data.layout == "synthetic" and not (cfg.data.root / "images").is_dir():
        # find_files would generate the scenes there; a check reads, it never writes
        s = cfg.data.synthetic
        raise CamsegError(
            f"data.root {cfg.data.root}: no synthetic scenes there yet (no images/), and a check "
            f"writes nothing; make them with camseg data synth --out {cfg.data.root} --n {s.n} "
            f"--size {s.size[0]}x{s.size[1]} --seed {s.seed} --valid-fraction "
            f"{s.valid_fraction:g} (training on the synthetic layout also makes them)"
        )
    files = find_files(cfg.data, CHECK_OPTIONS if root is not None else CONFIG_OPTIONS)
    report = check_dataset(files)
    out.print(
        Text.assemble(
            (str(files.root), "bold"),
            f" ({files.layout}): {report.n_images} images, "
            f"{report.n_train} train / {report.n_valid} valid, {len(report.codes)} classes",
        ),
        soft_wrap=True,
    )
    table = Table("index", "class", "pixel share", title="Pixels per class", min_width=40)
    for i, (name, share) in enumerate(report.pixel_shares().items()):
        table.add_row(str(i), name, f"{share:.4f}")
    out.print(table)
    if not report.ok:
        for problem in report.problems:
            err.print(f"camseg: problem: {problem}", soft_wrap=True)
        err.print(f"camseg: error: {len(report.problems)} problem(s) in {files.root}")
        raise typer.Exit(2)
    out.print("dataset OK", style="green")


@data_app.command("prepare", cls=Command)
@user_errors
def data_prepare(
    src: Annotated[
        Path,
        typer.Argument(help="CamSeq01 folder (flat, or CamSeq01_Raw + _Labeled).", metavar="SRC"),
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
    quiet: QuietOpt = False,
) -> None:
    """Convert a CamSeq01 download (colour labels) into the camvid layout, once."""
    quiet_mode(quiet)
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


@data_app.command("synth", cls=Command)
@user_errors
def data_synth(
    out_dir: Annotated[Path, typer.Option("--out", help="New folder for the scenes.")],
    n: Annotated[int, typer.Option("--n", help="Number of scenes.")] = 200,
    size: Annotated[str, typer.Option(help="Scene size HxW.")] = "96x128",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    valid_fraction: Annotated[float, typer.Option(help="Fraction put in valid.txt.")] = 0.2,
    quiet: QuietOpt = False,
) -> None:
    """Render synthetic street scenes labelled with the 32 CamVid classes."""
    quiet_mode(quiet)
    from camseg.data.synth import generate

    generate(out_dir, n=n, size=parse_size(size), seed=seed, valid_fraction=valid_fraction)
    out.print(f"wrote {n} synthetic scenes to {out_dir}", soft_wrap=True)


@data_app.command("download", cls=Command)
@user_errors
def data_download(
    name: Annotated[str, typer.Argument(help="camvid, camvid-tiny or camseq01.", metavar="NAME")],
    out_dir: Annotated[Path, typer.Option("--out", help="Parent folder for the data.")] = Path(
        "data"
    ),
    quiet: QuietOpt = False,
) -> None:
    """Download a dataset (needs internet) into the camvid layout."""
    quiet_mode(quiet)
    from camseg.data.prepare import download

    path = download(name, out_dir)
    out.print(f"{name} is ready at {path}", soft_wrap=True)
