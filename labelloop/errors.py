"""Errors a user can cause. Each carries one message naming the thing to fix, and its ``kind`` as
a field, so metrics, summaries and quarantine reasons never parse message text. The CLI and the
HTTP app print the message without a traceback."""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    CONFIG = "config"  # bad settings, label config or option
    MODEL = "model"  # missing, unreadable or not a YOLO model
    FETCH_REFUSED = "fetch_refused"  # a private address, a scheme or a root not allowed
    FETCH_TOO_LARGE = "fetch_too_large"  # over the byte or pixel limit
    FETCH_UNREADABLE = "fetch_unreadable"  # not an image, or corrupt
    FETCH_MISSING = "fetch_missing"  # 404, no such file
    FETCH_FAILED = "fetch_failed"  # the source answered with an error or timed out
    AUTH = "auth"  # 401/403 from a platform or a source
    MISSING = "missing"  # a project, task, job or version that does not exist
    REJECTED = "rejected"  # the remote refused the payload (4xx): retrying cannot help
    REMOTE_DOWN = "remote_down"  # unreachable, 5xx, timeouts: retrying may help
    DATA = "data"  # malformed annotation or dataset content
    STORE = "store"  # the metadata database or blob store failed
    CANCELLED = "cancelled"  # a long job stopped on request (never retried)
    INTERNAL = "internal"  # a bug: anything not classified above


class LabelloopError(Exception):
    """Base for user-facing errors."""

    default_kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        self.kind = kind or self.default_kind

    @property
    def retryable(self) -> bool:
        """Infrastructure failures may pass; bad input never will."""
        return self.kind in (ErrorKind.REMOTE_DOWN, ErrorKind.FETCH_FAILED, ErrorKind.STORE)


class ConfigError(LabelloopError):
    """Bad settings, label config or command-line option."""

    default_kind = ErrorKind.CONFIG


class ModelError(LabelloopError):
    """A model file that is missing, unreadable or not a YOLO model."""

    default_kind = ErrorKind.MODEL


class FetchError(LabelloopError):
    """An image that could not be fetched or decoded (missing, refused, corrupt, too large)."""

    default_kind = ErrorKind.FETCH_FAILED


class DataError(LabelloopError):
    """Annotation or dataset content that cannot be used as it is (quarantined, reported)."""

    default_kind = ErrorKind.DATA


class StoreError(LabelloopError):
    """The dataset store (database or blobs) failed."""

    default_kind = ErrorKind.STORE


class RegistryError(LabelloopError):
    """The experiment tracker or model registry (MLflow) refused or failed a request."""

    default_kind = ErrorKind.REMOTE_DOWN


class TrainingCancelled(LabelloopError):
    """A training stopped on request between epochs; nothing it made is promoted."""

    default_kind = ErrorKind.CANCELLED


class RemoteError(LabelloopError):
    """A labeling platform (Label Studio, CVAT) that is unreachable or answered with an error.

    ``status`` is the HTTP status when there was an answer; the kind follows from it (401/403 auth,
    404 missing, other 4xx rejected, 5xx or none remote down) unless given."""

    def __init__(self, message: str, status: int | None = None, kind: ErrorKind | None = None) -> None:
        super().__init__(message, kind or kind_of_status(status))
        self.status = status


def kind_of_status(status: int | None) -> ErrorKind:
    if status in (401, 403):
        return ErrorKind.AUTH
    if status == 404:
        return ErrorKind.MISSING
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return ErrorKind.REJECTED
    return ErrorKind.REMOTE_DOWN


def kind_of(exc: BaseException) -> ErrorKind:
    """The kind of any exception: ours carry it; anything else is internal."""
    return exc.kind if isinstance(exc, LabelloopError) else ErrorKind.INTERNAL
