"""User-facing errors: one clear line that says what to do, never a traceback.

Imports nothing of the project: every module's user-error class subclasses :class:`SegsplatError`.
"""

from __future__ import annotations

import sys
from typing import Callable


class SegsplatError(Exception):
    """An error caused by the user's input or environment; its message says how to fix it."""


class PromptError(SegsplatError, ValueError):
    """A prompt that cannot be answered (bad scale or level, pixel outside the image, model without features)."""


class NotSupported(PromptError):
    """The method does not answer this kind of prompt (its contract says so)."""


class InputError(SegsplatError, ValueError):
    """A command-line value or input file that cannot be used; the message names the option or file and the fix."""


def user_error_types() -> tuple:
    # PermissionError: a folder the user cannot read or write is theirs to fix; its message names the path
    return (SegsplatError, FileNotFoundError, FileExistsError, PermissionError)


def run_with_clear_errors(command: Callable[[], int]) -> int:
    """Run a CLI command; known user errors print as one red line and exit code 2."""
    try:
        return command()
    except user_error_types() as error:
        # colour only on a terminal: a redirected log gets no raw escape codes
        label = "\033[31merror:\033[0m" if getattr(sys.stderr, "isatty", lambda: False)() else "error:"
        print(f"{label} {error}", file=sys.stderr)
        return 2
