"""The one error type the library raises for problems a user can fix (bad config, bad data, bad
model file). The CLI turns it into a single stderr line and exit code 2."""


class CamsegError(Exception):
    """A user-actionable failure: the message names the file or key and what to do."""
