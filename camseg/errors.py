"""The one error type the library raises for problems a user can fix (bad config, bad data, bad
model file). The CLI turns it into a single stderr line and exit code 2."""

from __future__ import annotations

import contextlib
import importlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType


class CamsegError(Exception):
    """A user-actionable failure: the message names the file or key and what to do."""


# the names users know these optional packages by, where they differ from the import name
PACKAGE_NAMES = {"av": "PyAV"}


def require_extra(*modules: str, extra: str, what: str, otherwise: str = "") -> ModuleType:
    """Import the optional packages `what` needs (the last one is returned), or one error naming
    every missing one and the extra that installs them; `otherwise` adds the way round it."""
    missing, found = [], None
    for name in modules:
        try:
            found = importlib.import_module(name)
        except ImportError:
            missing.append(PACKAGE_NAMES.get(name, name))
    if missing or found is None:
        instead = f" (or {otherwise})" if otherwise else ""
        raise CamsegError(
            f"{what} needs {', '.join(missing)}, which is not installed: "
            f"pip install 'camseg[{extra}]'{instead}"
        )
    return found


def first_line(e: BaseException) -> str:
    """An exception's first line (at most 200 characters), or its type's name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s request to stop), raised where Ctrl-C's
    KeyboardInterrupt would be, so that both keep what was finished: training saves and says how
    to resume, a video's outputs are closed with the frames written so far. Exit code 143."""

    exit_code = 143


def stop_signal(e: KeyboardInterrupt) -> tuple[str, int]:
    """What a Ctrl-C or SIGTERM stop says, and the shell's exit code for it (130 or 143)."""
    if isinstance(e, Terminated):
        return "terminated (SIGTERM)", Terminated.exit_code
    return "interrupted", 130


@dataclass
class HeldStop:
    stop: KeyboardInterrupt | None = None  # the Ctrl-C or SIGTERM that came while held


@contextlib.contextmanager
def stops_held() -> Iterator[HeldStop]:
    """Ctrl-C and SIGTERM wait while the block runs (a few seconds of final writes that must
    end whole), then are in `held.stop` for the caller to act on. Only the main thread gets
    signals; elsewhere this holds nothing."""
    held = HeldStop()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def hold(signum: int, frame: object) -> None:
        held.stop = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in before:
        signal.signal(s, hold)
    try:
        yield held
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
