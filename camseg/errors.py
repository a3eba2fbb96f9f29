"""The one error type the library raises for problems a user can fix (bad config, bad data, bad
model file). The CLI turns it into a single stderr line and exit code 2."""


class CamsegError(Exception):
    """A user-actionable failure: the message names the file or key and what to do."""


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
