"""The API server's answers as typed errors, so callers catch a class, not a status code.

The hierarchy follows kopf's (``kopf/_cogs/clients/errors.py``): one class per status a caller
handles on purpose, a class per status family for the rest. Every class is a
:class:`~pytest_kts.errors.ClusterError` whose message is the one line a user reads (what was
refused, and what to do); the status, reason and the server's own message are attributes.
:class:`ApiUnreachable` is the other failure: no answer at all, or 429/5xx until the retries
ran out.

Who catches what: a Job or claim already deleted (:class:`ApiNotFound`); the log endpoint
while the container is created (:class:`ApiBadRequest`); a watch that must re-list
(:class:`ApiGone`). Everything else reaches the user as its message.
"""

from __future__ import annotations

from collections.abc import Mapping

from pytest_kts.errors import ClusterError


class ApiError(ClusterError):
    """The API server answered with an error status (``status``, ``reason``, ``message``)."""

    def __init__(
        self,
        line: str,
        *,
        status: int,
        reason: str = "",
        message: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(line)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = dict(headers or {})


class ApiClientError(ApiError):
    """4xx: the request was refused as it stands."""


class ApiServerError(ApiError):
    """5xx: the server failed (answered after the retries, when a caller asked for one try)."""


class ApiBadRequest(ApiClientError):
    """400 (the log endpoint says so while the container is being created)."""


class ApiUnauthorized(ApiClientError):
    """401: the credentials were rejected."""


class ApiForbidden(ApiClientError):
    """403: RBAC does not allow the call."""


class ApiNotFound(ApiClientError):
    """404: no such object (or namespace, or resource type on this server)."""


class ApiConflict(ApiClientError):
    """409: the object exists already, or changed under us."""


class ApiGone(ApiClientError):
    """410: a watch's resourceVersion is too old; list again, then watch from there."""


class ApiUnprocessable(ApiClientError):
    """422: the object is invalid (a field the server's schema refuses)."""


class ApiTooManyRequests(ApiClientError):
    """429: the server asks to slow down (its ``Retry-After`` is in ``headers``)."""


class ApiUnreachable(ClusterError):
    """The API server did not answer (refused, timed out, dropped) or kept answering 429/5xx."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: ApiBadRequest,
    401: ApiUnauthorized,
    403: ApiForbidden,
    404: ApiNotFound,
    409: ApiConflict,
    410: ApiGone,
    422: ApiUnprocessable,
    429: ApiTooManyRequests,
}


def error_class(status: int) -> type[ApiError]:
    """The class for an HTTP status: its own, else its family's, else :class:`ApiError`."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 400 <= status < 500:
        return ApiClientError
    if 500 <= status < 600:
        return ApiServerError
    return ApiError
