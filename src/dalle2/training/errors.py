"""The one error type training raises for conditions the user must act on."""

from __future__ import annotations

from dalle2.errors import Dalle2Error


class TrainingError(Dalle2Error, RuntimeError):
    """Training cannot go on: a non-finite loss, an unusable checkpoint, a missing tracker package, ...

    The message names the step or the file, and says what to do.
    """
