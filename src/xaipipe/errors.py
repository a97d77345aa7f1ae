"""Exceptions with messages that name the file or key at fault."""


class XaipipeError(Exception):
    """Base class of xaipipe's own errors."""


class ConfigError(XaipipeError, ValueError):
    """A bad configuration value: the message names the key and the allowed values."""


class WeightsNotFoundError(XaipipeError, FileNotFoundError):
    """Model weights that are not available locally (nothing is ever downloaded)."""


class DataError(XaipipeError, ValueError):
    """Unreadable or inconsistent data: the message names the file."""


#: what the ``on_nonfinite`` option of methods and metrics accepts
ON_NONFINITE = ("raise", "record")


class NonFiniteError(DataError):
    """NaN or Inf in attribution maps or model scores. The message names the images (their
    ids, or their positions in the batch where no ids are known); ``ids`` holds them too.
    Callers that prefer to keep going pass ``on_nonfinite="record"`` (see the README)."""

    def __init__(self, message: str, ids=()):
        super().__init__(message)
        self.ids = list(ids)

    def __reduce__(self):                  # keep ``ids`` across processes (Dask workers)
        return type(self), (self.args[0], self.ids)


class OutputWriteError(XaipipeError, OSError):
    """Writing an output failed (disk full, no permission, read-only file system, a parent
    path that is a file): the message names the final output path and the reason. Keeps
    ``errno`` and ``filename`` (the output path) of the underlying :class:`OSError`."""

    def __init__(self, message: str, errno: int | None = None, filename=None):
        super().__init__(message)
        self.errno, self.filename = errno, None if filename is None else str(filename)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return type(self), (self.message, self.errno, self.filename)
