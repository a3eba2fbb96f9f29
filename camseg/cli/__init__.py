"""The `camseg` command line: parses arguments, calls the library, prints for the user.

The only package that imports typer, prints or exits. A `CamsegError` from the library becomes
one line on stderr and exit code 2. app.py holds what the commands share; data.py, train.py,
use.py and export.py the commands themselves.

The commands import the library inside their functions, after the arguments, config and paths
are checked: torch and fastai take 4-8 s to import, and a mistake is answered in under a second
without them (`import camseg.cli` loads neither).
"""

from __future__ import annotations

import signal
from types import FrameType

from camseg.cli import data, export, train, use  # noqa: F401  (each registers its commands on app)
from camseg.cli.app import app
from camseg.errors import Terminated

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point. SIGTERM is handled as Ctrl-C is (see camseg.errors.Terminated):
    a batch scheduler's or `kill`'s stop keeps what was finished, and exits 143."""
    signal.signal(signal.SIGTERM, _terminate)
    app(prog_name="camseg")


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM stops at once
    raise Terminated
