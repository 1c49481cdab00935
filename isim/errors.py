"""The one exception type that reaches users as a single clear line instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class IsimError(Exception):
    """A problem with the user's input (config key, file, dataset) that they can fix.

    The message names the key or file and says how to fix it; entry points print it as one line.
    """


def user_message(error: BaseException) -> str | None:
    """The one-line message of the IsimError behind ``error``, or None if there is none.

    Hydra's instantiate wraps errors raised in constructors (found through ``__cause__``), and
    DataLoader workers re-raise as ``IsimError("Caught IsimError in ... Traceback ...: <message>")``,
    whose last line is the original message. Only explicit chaining (``raise ... from``) is followed: an
    unexpected error raised while an IsimError was being handled (``__context__``) is a bug, and keeps its
    traceback.
    """
    while error is not None and not isinstance(error, IsimError):
        error = error.__cause__
    if error is None:
        return None
    text = str(error).strip()
    return text.splitlines()[-1].split("IsimError: ", 1)[-1] if text else repr(error)


def exit_on_user_error(job: Callable[[], Any], keep_going: bool = False) -> Any:
    """Run ``job``; an IsimError behind any failure ends the program with its one line and exit code 2.

    With ``keep_going`` (a sweep job) the line is printed and the error re-raised as one IsimError, so the
    launcher records the job as failed and runs the others.
    """
    try:
        return job()
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        print(f"isim: error: {message}", file=sys.stderr)
        if keep_going:
            raise IsimError(message) from None
        sys.exit(2)


def brief(error: BaseException, limit: int = 160) -> str:
    """A library error's text as one short line, to quote inside an IsimError."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
