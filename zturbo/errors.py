"""One exception hierarchy for everything a user can get wrong or run into.

Messages are written for people: they name the file, node or field and say what was expected.
The server maps these classes to HTTP codes in one place; the CLI prints the message without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class ZTurboError(Exception):
    """Base class: the message is shown to the user as is."""


class InputError(ZTurboError, ValueError):
    """A parameter, request field or workflow value is invalid."""


class ModelFileError(ZTurboError):
    """A model file is unreadable, of the wrong kind, or unsafe to load."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


class MissingModelError(ZTurboError):
    """A required model file is not where we looked for it."""


class GenerationError(ZTurboError):
    """Sampling produced something unusable (NaN/inf latents, ...)."""


class NonFiniteError(GenerationError):
    """A model produced NaN/inf values (the engine's watchdog retries once on a safer path)."""


class Interrupted(ZTurboError):
    """The user cancelled the job."""
