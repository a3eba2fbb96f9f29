"""The `camseg` command line: parses arguments, calls the library, prints for the user.

The only package that imports typer, prints or exits. A `CamsegError` from the library becomes
one line on stderr and exit code 2. app.py holds what the commands share; data.py, train.py,
use.py and export.py the commands themselves.
"""

from __future__ import annotations

from camseg.cli import data, export, train, use  # noqa: F401  (each registers its commands on app)
from camseg.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app(prog_name="camseg")
