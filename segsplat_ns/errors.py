"""User-facing errors: one clear line that says what to do, never a traceback."""

from __future__ import annotations

import sys
from typing import Callable


class SegsplatError(Exception):
    """An error caused by the user's input or environment; its message says how to fix it."""


def user_error_types() -> tuple:
    from segsplat_ns.eval.ground_truth import GroundTruthError
    from segsplat_ns.masks.sources import MaskSourceError
    from segsplat_ns.segmenter import PromptError

    return (SegsplatError, MaskSourceError, PromptError, GroundTruthError, FileNotFoundError, FileExistsError)


def run_with_clear_errors(command: Callable[[], int]) -> int:
    """Run a CLI command; known user errors print as one red line and exit code 2."""
    try:
        return command()
    except user_error_types() as error:
        print(f"\033[31merror:\033[0m {error}", file=sys.stderr)
        return 2
