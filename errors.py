"""The API's error catalog and the one handler that renders every error.

Every error under ``/api/`` is ``{"error": {"code", "message"}}`` with a 4xx/5xx
status: no stack traces and no HTML pages. Under ``/v1`` (the OpenAI-compatible
API) the same errors have OpenAI's shape, ``{"error": {"message", "type",
"param", "code"}}``, because the clients there are OpenAI's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from sanic import HTTPResponse, Request, Sanic
from sanic.exceptions import BadRequest, SanicException, URITooLong
from websockets.exceptions import InvalidHandshake

import redaction
from channels.answers import UnknownAnswer, UnknownConversation
from channels.limits import LimitExceeded
from channels.store import StoreUnavailable

log = logging.getLogger("chime.errors")


class ApiError(SanicException):
    """An expected error with a stable ``code`` that clients can branch on."""

    status_code = 400
    code = "bad_request"
    message = "The request could not be understood."
    quiet = True
    param: str | None = None  # the request field at fault, named in /v1's OpenAI-shaped errors

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(message or self.message, status_code=self.status_code, headers=headers)
        self.message = message or self.message


class InvalidJson(ApiError):
    code = "invalid_json"
    message = "The request body must be a JSON object."


class InvalidMessage(ApiError):
    code = "invalid_message"
    message = "message must be a string of 1 to 32000 characters."


class InvalidParameter(ApiError):
    code = "invalid_parameter"


class InvalidField(InvalidParameter):
    """A field of a ``/v1`` request with a bad value; ``param`` names it, as OpenAI's errors do."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class ModelNotFound(ApiError):
    status_code = 404
    code = "model_not_found"
    message = "No such model here: GET /v1/models lists the models this server offers."


class InvalidSubscription(ApiError):
    code = "invalid_subscription"


class CrossOrigin(ApiError):
    status_code = 403
    code = "cross_origin"
    message = ("Requests that change state must come from this server's own pages "
               "(or an origin in CHIME_ALLOWED_ORIGINS).")


class Unauthenticated(ApiError):
    status_code = 401
    code = "unauthenticated"
    message = "Sign in: send a valid bearer token or the chime_token cookie."


class NotFound(ApiError):
    status_code = 404
    code = "not_found"
    message = "Nothing here: it does not exist or is not yours."


class MethodNotAllowed(ApiError):
    status_code = 405
    code = "method_not_allowed"
    message = "This method is not allowed here."


class AlreadyFinished(ApiError):
    status_code = 409
    code = "already_finished"
    message = "The answer has already finished."


class RequestTimeout(ApiError):
    status_code = 408
    code = "request_timeout"
    message = "The request did not arrive in time; send it again."


class TooLarge(ApiError):
    status_code = 413
    code = "too_large"
    message = "The request body is too large."


class UnsupportedMediaType(ApiError):
    status_code = 415
    code = "unsupported_media_type"
    message = "Send the body as application/json."


class RateLimited(ApiError):
    status_code = 429
    code = "rate_limited"
    message = "Too many requests: wait a moment and try again."

    def __init__(self, message: str | None = None, *, retry_after_s: int = 1):
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after_s)))})


class Unavailable(ApiError):
    status_code = 503
    code = "unavailable"
    message = "The server is shutting down; try again in a moment."

    def __init__(self, message: str | None = None, *, retry_after_s: int = 1):
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after_s)))})


# Sanic's own exceptions, by status, mapped onto the catalog's codes.
_SANIC_CODES: dict[int, type[ApiError] | tuple[str, str]] = {
    400: ("bad_request", "The request could not be understood."),
    401: Unauthenticated,
    403: CrossOrigin,
    404: NotFound,
    405: MethodNotAllowed,
    408: RequestTimeout,
    413: TooLarge,
    415: UnsupportedMediaType,
    429: RateLimited,
    # Sanic's own 503 is its response timeout, not a stop.
    503: ("unavailable", "The server could not answer in time; try again in a moment."),
}


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> HTTPResponse:
    return HTTPResponse(error_body(code, message), status=status, headers=headers,
                        content_type="application/json")


# Domain exceptions raised below the routes, and the API error each stands for: the one table.
_DOMAIN_ERRORS: tuple[tuple[type[Exception], Callable[[Any], ApiError]], ...] = (
    (UnknownConversation, lambda exc: NotFound("No such conversation.")),
    (UnknownAnswer, lambda exc: NotFound("No such channel.")),
    (LimitExceeded, lambda exc: RateLimited(exc.message, retry_after_s=exc.retry_after_s)),
    (StoreUnavailable, lambda exc: Unavailable("Storage is unavailable for a moment; try again.",
                                               retry_after_s=exc.retry_after_s)),
)


def domain_error(exc: Exception) -> ApiError | None:
    """The API error a domain exception from below the routes stands for (None: not one)."""
    for kind, to_api in _DOMAIN_ERRORS:
        if isinstance(exc, kind):
            return to_api(exc)
    if is_unreadable_handshake(exc):
        return ApiError("The WebSocket handshake has a header that is not valid text.")
    return None


def is_unreadable_handshake(exc: Exception) -> bool:
    """Sanic answers a WebSocket handshake whose headers the websockets library refuses (bytes that
    are not text in any header) with a 500 of its own, raised while handling that refusal: the fault
    is the client's."""
    return (isinstance(exc, SanicException) and exc.status_code == 500
            and isinstance(exc.__context__, InvalidHandshake))


def render_error(request: Request, exc: Exception) -> HTTPResponse:
    """The one handler: every exception becomes the API's JSON error body (OpenAI's under ``/v1``)."""
    exc = domain_error(exc) or exc
    status, code, message, headers = _described(request, exc)
    if is_openai_path(request.path):
        return openai_error(status, code, message, headers, getattr(exc, "param", None))
    return json_error(status, code, message, headers)


def _described(request: Request, exc: Exception) -> tuple[int, str, str, dict[str, str]]:
    if isinstance(exc, ApiError):
        return exc.status_code, exc.code, exc.message, dict(exc.headers or {})
    if isinstance(exc, SanicException):
        status = exc.status_code
        known = _SANIC_CODES.get(status)
        if isinstance(known, type):
            code, message = known.code, known.message
        elif known:
            code, message = known
        else:
            code, message = ("error", "The request failed.") if status < 500 else (
                "internal_error", "Something went wrong on the server.")
        return status, code, message, dict(exc.headers or {})
    log.exception("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return 500, "internal_error", "Something went wrong on the server.", {}


# ---- OpenAI's shape, under /v1 ----------------------------------------------------------

OPENAI_PREFIX = "/v1"
# Chime's codes whose OpenAI counterparts clients branch on.
_OPENAI_CODES = {"unauthenticated": "invalid_api_key", "rate_limited": "rate_limit_exceeded"}


def is_openai_path(path: str) -> bool:
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def openai_error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def openai_error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 param: str | None = None) -> HTTPResponse:
    body = {"error": {"message": message, "type": openai_error_type(status), "param": param,
                      "code": _OPENAI_CODES.get(code, code)}}
    return HTTPResponse(orjson.dumps(body), status=status, headers=headers, content_type="application/json")


class ErrorRenderingRequest(Request):
    """Sanic's request, able to stand in for a request line it could not parse.

    To answer a request whose URL it refuses (a NUL byte, ``http://[::1``) Sanic
    builds a stand-in request (method ``NONE``) from that same URL, which fails
    again: the client got no answer and the log a traceback quoting the URL,
    query string and token included. The stand-in gets ``/`` instead, so the
    refusal is rendered as the API's 400 like any other error.
    """

    __slots__ = ()

    def __init__(self, url_bytes: bytes, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(url_bytes, *args, **kwargs)
        except (BadRequest, URITooLong):
            if kwargs.get("method") != "NONE":
                raise
            super().__init__(b"/", *args, **kwargs)


def install(app: Sanic[Any, Any]) -> None:
    """The one handler for every error, a request class that can render any of them, and a log without secrets."""
    app.request_class = ErrorRenderingRequest
    app.error_handler.add(Exception, render_error)
    redaction.install()
