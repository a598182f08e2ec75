"""The API's own error vocabulary, raised by services and turned into wire errors by the protocol layer."""

from __future__ import annotations


class ApiError(Exception):
    """An error the RoboMaker API defines; `code` is the exception shape's name in the model."""

    code = "InternalServerException"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidParameter(ApiError):
    code = "InvalidParameterException"


class ResourceNotFound(ApiError):
    code = "ResourceNotFoundException"


class ResourceAlreadyExists(ApiError):
    code = "ResourceAlreadyExistsException"


class LimitExceeded(ApiError):
    code = "LimitExceededException"


class IdempotentParameterMismatch(ApiError):
    code = "IdempotentParameterMismatchException"


class ConcurrentDeployment(ApiError):
    code = "ConcurrentDeploymentException"


class Throttling(ApiError):
    code = "ThrottlingException"


class InternalServer(ApiError):
    code = "InternalServerException"


class ServiceUnavailable(ApiError):
    code = "ServiceUnavailableException"


class NotAvailableYet(InvalidParameter):
    """An operation this release routes and validates but does not carry out yet."""

    def __init__(self, operation: str):
        super().__init__(
            f"{operation} is not available in this OpenRoboMaker release yet; "
            "see the compatibility table in the README"
        )
