"""Typed errors of jobnest and their gRPC status codes.

The one table below maps each error family to a status code. The controller raises these and
turns them into statuses (`jobnest_controller.server`); the SDK turns statuses back into them
(`jobnest.client`). SDK users catch these, never `grpc.RpcError`.
"""

import grpc


class JobnestError(Exception):
    """Base of every jobnest error; `field` names the offending input when there is one."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        self.problem = message  # the message without the field
        super().__init__(f"{field}: {message}" if field else message)


class InvalidSpec(JobnestError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(JobnestError):
    code = grpc.StatusCode.NOT_FOUND


class Conflict(JobnestError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(JobnestError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(JobnestError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(JobnestError):
    """A limit was reached (open streams, say): try again once some are closed."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(JobnestError):
    code = grpc.StatusCode.UNAVAILABLE


class Timeout(JobnestError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Corrupt(JobnestError):
    """Stored bytes no longer match their digest: they are not served, and not reused."""

    code = grpc.StatusCode.DATA_LOSS


BY_CODE: dict[grpc.StatusCode, type[JobnestError]] = {
    cls.code: cls
    for cls in (InvalidSpec, NotFound, Conflict, Unauthenticated, PermissionDenied, ResourceExhausted, Unavailable,
                Timeout, Corrupt)
}


FIELD_KEY = "jobnest-field-bin"  # the trailing metadata that carries an error's field (UTF-8)


def from_rpc_error(error: grpc.RpcError) -> JobnestError:
    """The typed error for a failed call, with its field; the message keeps the controller's wording."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else str(error)) or code.name
    trailers = dict(error.trailing_metadata() or ()) if hasattr(error, "trailing_metadata") else {}
    field = trailers[FIELD_KEY].decode(errors="replace") if FIELD_KEY in trailers else None
    cls = BY_CODE.get(code, JobnestError)
    if field and details.startswith(f"{field}: "):
        return cls(details.removeprefix(f"{field}: "), field=field)
    return cls(details)
