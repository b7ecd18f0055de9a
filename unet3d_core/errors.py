"""The project's exception types, all in one place.

A :class:`UNet3DError` is a user error: bad input, a bad flag, a missing file.
The CLI prints its message as one line and exits non-zero; anything else that
escapes is a bug and keeps its traceback. :class:`TrainingStopped` is not an
error at all: training ended early on request, and the CLI exits with status 0.

This module imports nothing from the project, so every other module can
import it.
"""
from __future__ import annotations

from dataclasses import dataclass


class UNet3DError(Exception):
    """A problem the user can fix; the message names the file, flag or case.

    Raised mostly as one of the subclasses below; the CLI catches it, prints ``error: <message>`` and exits 1.
    """


class DataError(UNet3DError):
    """Input data (NIfTI cases, records, manifest) is missing or invalid.

    Raised when cases are scanned, read or preprocessed and when records or their manifest are opened.
    """


class ConfigError(UNet3DError):
    """A flag or combination of flags is invalid.

    Raised while the flags are checked and resolved (e.g. :mod:`unet3d_core.engine.run_config`), before any work.
    """


class BackendError(UNet3DError):
    """A backend is unknown, unavailable, or a plugin misbehaved.

    Raised when backends are loaded and their hooks called (:mod:`unet3d_core.plugins`) and by the backends.
    """


@dataclass(frozen=True)
class CaseProblem:
    """Why one case cannot be used; ``str()`` is the one-line error.

    Not an exception: scanning and preprocessing collect these, and
    :class:`InvalidCaseError` carries one when a case stops the command.
    """

    case_id: str
    path: str
    reason: str

    def __str__(self) -> str:
        return "case {}: {}: {}".format(self.case_id, self.path, self.reason)


class InvalidCaseError(DataError):
    """A case failed a check; ``problem`` says which case, file and why.

    Raised while scanning or reading raw cases (:mod:`unet3d_core.data.case_scan`,
    :mod:`unet3d_core.data.cases`) and by preprocessing unless it skips invalid cases.
    """

    def __init__(self, problem: CaseProblem, hint: str = ""):
        super().__init__(str(problem) + (" ({})".format(hint) if hint else ""))
        self.problem = problem


class CheckpointWriteError(UNet3DError):
    """A checkpoint could not be written or copied; the previous one is intact.

    Raised by :mod:`unet3d_core.model.checkpoints` when saving a checkpoint or keeping
    one as the best fails (a full disk, a folder that cannot be written).
    """


class TrainingError(UNet3DError):
    """Training cannot go on (e.g. the loss became NaN); the last checkpoint is intact.

    Raised by a step listener (:mod:`unet3d_core.engine.listeners`) to end training.
    """


class TrainingStopped(Exception):
    """Training stopped early on request, after saving a checkpoint; not an error (exit status 0).

    Raised by the trainer after SIGTERM or SIGINT (:mod:`unet3d_core.engine.stopping`).
    """
