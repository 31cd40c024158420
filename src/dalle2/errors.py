"""The base of every error dalle2 raises on purpose, and the line between a user's mistake and a bug.

A :class:`Dalle2Error` is a problem with what the user asked for or gave: a path, a file, an option, a config
value, a prompt. Its message is one line that names the culprit and says what to do; ``dalle2.cli.main`` prints
it as ``dalle2: error: <message>`` and exits with status 2. Any other exception is a bug and keeps its
traceback; in particular a plain ``ValueError`` from numpy, torch or our own code is *not* a usage error.

Each module keeps its own subclass (``ConfigError``, ``ClipError``, ``DatasetError``, ``PipelineError``, ...),
so callers can catch one family; :class:`InvalidConfigError` is for model and training config values checked
where the config is built (``DiffusionConfig``, ``PriorConfig``, ``UNetConfig``, the samplers, EMA...).

:class:`Dalle2Error` subclasses ``ValueError``: code written as ``except ValueError`` and tests written as
``pytest.raises(ValueError)`` keep working. This module imports nothing from dalle2 (nor anything heavy): every
other module may import it.
"""

from __future__ import annotations

__all__ = ["Dalle2Error", "InvalidConfigError"]


class Dalle2Error(ValueError):
    """A problem with what the user asked for or gave: a path, a file, an option, a config value.

    The CLI prints its one line and exits 2; anything else is a bug and keeps its traceback.
    """


class InvalidConfigError(Dalle2Error):
    """A model or training config value is invalid (out of range, of the wrong type, an unknown name)."""
