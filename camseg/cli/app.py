"""The parts every `camseg` command shares: the typer apps, the two consoles, the choice types
of the options, and how errors reach the user: a `CamsegError` from the library, and a bad
option value that typer rejects, each become one line on stderr and exit code 2.
"""

from __future__ import annotations

import errno
import functools
import logging
import re
import sys
import warnings
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

import typer
from rich.console import Console
from rich.logging import RichHandler
from typer.core import TyperCommand, TyperGroup

from camseg.config.values import Runtime, Weights
from camseg.errors import CamsegError, stop_signal


class _Group(TyperGroup):
    """typer's group, with flags shown without a <bool>."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_metavar(super().get_params(ctx))


class _OneLineErrors(_Group):
    """typer's group, with a usage error (an unknown option, `--batch-size abc`, a choice not
    offered) as one `camseg: error:` line on stderr instead of typer's usage box, and Ctrl-C or
    SIGTERM as one line and exit code 130 or 143."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        from typer import _click

        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _click.exceptions.NoArgsIsHelpError as e:
            e.show()
            sys.exit(e.exit_code)
        except _click.exceptions.ClickException as e:
            hint = f" (see {e.ctx.command_path} --help)" if getattr(e, "ctx", None) else ""
            message = " ".join(e.format_message().split())
            err.print(f"camseg: error: {message}{hint}", soft_wrap=True)
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        # Ctrl-C or SIGTERM (camseg.errors.Terminated) that a command did not turn into its own
        # message (training does): one line, and the shell's exit code for the signal
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            what, code = stop_signal(e)
            err.print(f"camseg: {what}")
            raise typer.Exit(code) from None


class Command(TyperCommand):
    """typer's command (every camseg command's) with the usual usage line, a required argument
    as INPUTS... where typer writes {INPUTS}..., and flags without a <bool>."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [
            re.sub(r"^\{(.+)\}(\.\.\.)?$", r"\1\2", piece)
            for piece in super().collect_usage_pieces(ctx)
        ]

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_metavar(super().get_params(ctx))


def _flags_without_metavar(params: list[Any]) -> list[Any]:
    """Flags (--help, --tta, typer's completion options) shown without the <bool> typer prints
    beside them: a flag takes no value."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    return params


app = typer.Typer(
    cls=_OneLineErrors,
    help="Train and use U-Net models for semantic segmentation of urban driving scenes.",
    no_args_is_help=True,
    add_completion=True,  # camseg --install-completion: bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(cls=_Group, help="Inspect configs.", no_args_is_help=True)
data_app = typer.Typer(
    cls=_Group, help="Check, prepare, download and generate datasets.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

# no markup: paths, class names and messages print as they are ("runs/[old]" stays whole);
# a styled line passes rich Text or style=
out = Console(highlight=False, markup=False, emoji=False)
err = Console(stderr=True, highlight=False, markup=False, emoji=False)

F = TypeVar("F", bound=Callable[..., Any])


def choices(name: str, literal: Any) -> type[Enum]:
    """A str Enum of a Literal's values: typer offers and checks them; `.value` is the str."""
    return Enum(name, {v: v for v in get_args(literal)}, type=str)  # type: ignore[return-value]


ConfigOpt = Annotated[
    Path,
    typer.Option("--config", "-c", help="YAML config file or preset name (camseg config list)."),
]
OptionalConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file or preset name (camseg config list)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a key: --set data.batch_size=4 (value is YAML)."),
]
NoProgressOpt = Annotated[bool, typer.Option("--no-progress", help="No progress bars.")]


RunOpt = Annotated[Path | None, typer.Option("--run", help="Run folder (uses its model.pth).")]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="model.pth, a checkpoint file or a model.onnx from camseg export (runs on ONNX "
        "Runtime, CPU, fp32) instead of --run.",
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
RuntimeChoice = choices("RuntimeChoice", Runtime)
RuntimeOpt = Annotated[
    RuntimeChoice,
    typer.Option(
        help="What runs an .onnx model (given, or the run's int8 file that predict picks): "
        "auto (OpenVINO when installed, else ONNX Runtime), onnxruntime or openvino."
    ),
]
WeightsChoice = choices("WeightsChoice", Weights)
WeightsOpt = Annotated[
    WeightsChoice | None,
    typer.Option(
        "--weights",
        help="A run's last epoch (model.pth; the default, as the paper and fastai's notebook "
        "use) or its best epoch by acc_camvid.",
    ),
]


def model_source(run: Path | None, model: Path | None, weights: Any = None) -> Path:
    """--run or --model; with neither, the newest finished run under ./runs (said on stderr).
    A run folder becomes the file of its --weights (default last): the model file itself."""
    from camseg.core.runs import Run, model_file

    if run is not None and model is not None:
        raise CamsegError("give either --run RUN_DIR or --model model.pth, not both")
    source = run if run is not None else model
    if source is None:
        from camseg.core.runs import latest_run

        source = latest_run(Path("runs")).dir
        err.print(f"using the newest finished run: {source}", soft_wrap=True)
    if not source.exists():
        raise CamsegError(f"{source}: no such file or folder")
    choice = weights.value if weights is not None else None
    if not source.is_dir():
        return model_file(source, choice)
    path = model_file(source, choice or "last")
    run = Run(source)
    if not run.finished:
        pid = run.trained_by()
        now = f"is being trained now (pid {pid})" if pid else "has not finished training"
        err.print(f"camseg: note: {source} {now}: using {path}", soft_wrap=True)
    return path


# A write the disk or file system refused (full, over quota, read-only, too big), and a file the
# user may not touch: one line, not a traceback.
CANNOT_WRITE = {errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
NOT_PERMITTED = {errno.EACCES, errno.EPERM}


def user_errors(fn: F) -> F:
    """Turn CamsegError into one stderr line and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CamsegError as e:
            err.print(f"camseg: error: {e}", soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as e:
            where = e.filename or "a file"
            if e.errno in CANNOT_WRITE:
                message = (
                    f"cannot write {where}: {e.strerror}; free space or choose another folder "
                    "(what was written before is kept)"
                )
            elif e.errno in NOT_PERMITTED:
                message = f"{where}: {e.strerror}; check its permissions, or choose another path"
            else:
                raise
            err.print(f"camseg: error: {message}", soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    """`camseg --version`: camseg's version and the libraries' a bug report needs, read from the
    installed packages' metadata (nothing is imported, so it answers at once)."""
    if not value:
        return
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from camseg.core import __version__

    libs = []
    for name in ("torch", "torchvision", "fastai"):
        try:
            libs.append(f"{name} {_build_version(name) or version(name)}")
        except PackageNotFoundError:
            libs.append(f"{name} not installed")
    line = f"camseg {__version__} ({', '.join(libs)}, Python {platform.python_version()})"
    out.print(line, soft_wrap=True)
    raise typer.Exit()


def _build_version(name: str) -> str | None:
    """torch's and torchvision's version with the build tag (2.14.1+cu130, 2.14.1+cpu), which
    the package metadata leaves out, read from their version.py without importing them."""
    import importlib.util
    import re

    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        return None
    m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return m.group(1) if m else None


QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="Only errors, warnings and what was asked for (--json); no progress.",
    ),
]


def quiet_mode(quiet: bool) -> None:
    """--quiet: stdout says nothing but --json documents, camseg logs warnings only, no bars."""
    if quiet:
        out.quiet = True
        logging.getLogger("camseg").setLevel(logging.WARNING)


def shows_progress(no_progress: bool = False, console: Console = err) -> bool:
    """Progress bars on `console` (fastai's go to stdout): on a terminal, unless --no-progress
    or --quiet."""
    return not no_progress and not out.quiet and console.is_terminal


def print_json(data: Any) -> None:
    """One JSON document (or line) on stdout as it is: no rich markup or emoji codes, and
    printed under --quiet too (it is what was asked for)."""
    import json

    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


@app.callback()
def _setup(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="camseg's debug messages."),
    ] = False,
    quiet: QuietOpt = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the versions and exit.",
        ),
    ] = False,
) -> None:
    # fastai's own import-time deprecation chatter is not something a user can act on
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    warnings.filterwarnings("ignore", message="The 'mode.chained_assignment' option")
    logging.basicConfig(  # other libraries: their warnings only, -v or not
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("camseg").setLevel(logging.DEBUG if verbose else logging.INFO)
    out.quiet = False  # a process that runs several commands (tests, a notebook) starts anew
    quiet_mode(quiet)


def fmt_time(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"
