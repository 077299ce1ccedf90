"""Domain errors, each carrying the HTTP status it maps to.

Storage, the store and access control raise these; exactly one middleware (``pod.errors``) turns
them into responses, so handlers never build error responses themselves.

    PodError
    ├── BadRequest            400  malformed input (bad RDF, bad header, unsafe path)
    ├── Unauthorized          401  no or invalid credentials
    ├── Forbidden             403  authenticated, not allowed
    ├── NotFound              404
    ├── MethodNotAllowed      405  e.g. DELETE of a storage root
    ├── NotAcceptable         406  no representation fits ``Accept``
    ├── Conflict              409  containment triples, non-empty container, patch mismatch
    ├── PreconditionFailed    412  ``If-Match`` / ``If-None-Match`` on writes
    ├── PayloadTooLarge       413
    ├── UnsupportedMediaType  415
    ├── RangeNotSatisfiable   416  no byte range of ``Range`` lies within the representation
    └── UnprocessableEntity   422  well-formed but meaningless (e.g. a malformed N3 Patch)
"""

from __future__ import annotations

from collections.abc import Mapping


class PodError(Exception):
    """Base class: ``status`` is the HTTP status, ``message`` is shown to the client."""

    status = 500

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


class BadRequest(PodError):
    status = 400


class Unauthorized(PodError):
    status = 401


class Forbidden(PodError):
    status = 403


class NotFound(PodError):
    status = 404


class MethodNotAllowed(PodError):
    status = 405


class NotAcceptable(PodError):
    status = 406


class Conflict(PodError):
    status = 409


class PreconditionFailed(PodError):
    status = 412


class PayloadTooLarge(PodError):
    status = 413


class UnsupportedMediaType(PodError):
    status = 415


class RangeNotSatisfiable(PodError):
    status = 416


class UnprocessableEntity(PodError):
    status = 422
