"""Exceptions with messages that name the file or key at fault."""


class XaipipeError(Exception):
    """Base class of xaipipe's own errors."""


class ConfigError(XaipipeError, ValueError):
    """A bad configuration value: the message names the key and the allowed values."""


class WeightsNotFoundError(XaipipeError, FileNotFoundError):
    """Model weights that are not available locally (nothing is ever downloaded)."""


class DataError(XaipipeError, ValueError):
    """Unreadable or inconsistent data: the message names the file."""
