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


def user_error_types() -> tuple:
    return (SegsplatError, FileNotFoundError, FileExistsError)


def run_with_clear_errors(command: Callable[[], int]) -> int:
    """Run a CLI command; known user errors print as one red line and exit code 2."""
    try:
        return command()
    except user_error_types() as error:
        print(f"\033[31merror:\033[0m {error}", file=sys.stderr)
        return 2
