"""The project's exception types.

A :class:`UNet3DError` is a user error: bad input, a bad flag, a missing file.
The CLI prints its message as one line and exits non-zero; anything else that
escapes is a bug and keeps its traceback.
"""


class UNet3DError(Exception):
    """A problem the user can fix; the message names the file, flag or case."""


class DataError(UNet3DError):
    """Input data (NIfTI cases, records, manifest) is missing or invalid."""


class ConfigError(UNet3DError):
    """A flag or combination of flags is invalid."""


class BackendError(UNet3DError):
    """A backend is unknown, unavailable, or a plugin misbehaved."""
