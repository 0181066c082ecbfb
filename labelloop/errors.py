"""Errors a user can cause. Each carries one message naming the thing to fix; the CLI and the
HTTP app print it without a traceback."""


class LabelloopError(Exception):
    """Base for user-facing errors."""


class ConfigError(LabelloopError):
    """Bad settings, label config or command-line option."""


class ModelError(LabelloopError):
    """A model file that is missing, unreadable or not a YOLO model."""


class FetchError(LabelloopError):
    """An image that could not be fetched or decoded (missing, refused, corrupt, too large)."""


class RemoteError(LabelloopError):
    """A labeling platform (Label Studio, CVAT) that is unreachable or answered with an error.

    ``status`` is the HTTP status when there was an answer, so callers can tell a refused
    payload (4xx: retrying cannot help) from a server or network failure."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
