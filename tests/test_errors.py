"""The error catalog and its one handler: every /api/ error is the API's JSON body."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import orjson
import pytest
from sanic import Request, Sanic
from sanic.compat import Header
from sanic.exceptions import BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge, SanicException

import errors

REQUEST = cast(Request, SimpleNamespace(method="GET", path="/api/x"))  # all the handler reads of a request


def body(response) -> dict:
    assert response.content_type == "application/json"
    return orjson.loads(response.body)


@pytest.mark.parametrize(("error", "status", "code"), [
    (errors.InvalidJson(), 400, "invalid_json"),
    (errors.InvalidMessage("message is required."), 400, "invalid_message"),
    (errors.InvalidParameter("after must be a non-negative integer."), 400, "invalid_parameter"),
    (errors.Unauthenticated(), 401, "unauthenticated"),
    (errors.NotFound(), 404, "not_found"),
    (errors.AlreadyFinished(), 409, "already_finished"),
    (errors.TooLarge(), 413, "too_large"),
    (errors.RateLimited(retry_after_s=7), 429, "rate_limited"),
    (errors.Unavailable(), 503, "unavailable"),
])
def test_catalog_errors_render_their_code_and_message(error: errors.ApiError, status: int, code: str) -> None:
    response = errors.render_error(REQUEST, error)
    assert response.status == status
    assert body(response) == {"error": {"code": code, "message": error.message}}
    assert error.message.strip() and error.quiet


def test_rate_limited_says_when_to_retry() -> None:
    assert errors.render_error(REQUEST, errors.RateLimited(retry_after_s=7)).headers["retry-after"] == "7"
    assert errors.render_error(REQUEST, errors.RateLimited(retry_after_s=0)).headers["retry-after"] == "1"


@pytest.mark.parametrize(("error", "status", "code"), [
    (BadRequest("nope"), 400, "bad_request"),
    (NotFound("Requested URL /api/x not found"), 404, "not_found"),
    (MethodNotAllowed("no", method="PUT", allowed_methods=["GET"]), 405, "method_not_allowed"),
    (PayloadTooLarge("big"), 413, "too_large"),
    (SanicException("teapot", status_code=418), 418, "error"),
    (SanicException("broken", status_code=502), 502, "internal_error"),
])
def test_sanic_errors_map_onto_the_catalog(error: SanicException, status: int, code: str) -> None:
    response = errors.render_error(REQUEST, error)
    assert response.status == status and body(response)["error"]["code"] == code
    assert response.body is not None
    assert "Requested URL" not in response.body.decode()  # the catalog's words, not the framework's


def test_method_not_allowed_keeps_the_allow_header() -> None:
    error = MethodNotAllowed("no", method="PUT", allowed_methods=["GET", "POST"])
    assert errors.render_error(REQUEST, error).headers["allow"] == "GET, POST"


def test_an_unexpected_exception_is_a_500_without_internals(app: Sanic) -> None:
    @app.get("/api/explode")
    async def explode(request):
        raise RuntimeError("secret internals /etc/passwd")

    _, response = app.test_client.get("/api/explode")
    assert response.status == 500
    assert response.json == {"error": {"code": "internal_error", "message": "Something went wrong on the server."}}
    assert "secret" not in response.text and "Traceback" not in response.text


def request_for(app: Sanic, url: bytes, method: str) -> errors.ErrorRenderingRequest:
    request = app.request_class(url_bytes=url, headers=Header({}), version="1.1", method=method,
                                transport=None, app=app)  # type: ignore[arg-type]  # never sent: only rendered
    assert isinstance(request, errors.ErrorRenderingRequest)
    return request


def test_a_url_sanic_cannot_parse_is_still_refused_as_a_request(app: Sanic) -> None:
    assert app.request_class is errors.ErrorRenderingRequest
    for url in (b"/api/x\x00?access_token=secret", b"http://[::1/api/x"):
        with pytest.raises(BadRequest):
            request_for(app, url, "GET")


def test_the_stand_in_for_rendering_that_refusal_can_be_built(app: Sanic) -> None:
    """Sanic answers an unparsable request line through a stand-in request (method NONE) made from
    the same URL; unless that stand-in can be built, the client gets no answer and the log a traceback."""
    stand_in = request_for(app, b"/api/x\x00?access_token=secret", "NONE")
    assert stand_in.path == "/" and stand_in.query_string == ""
    assert request_for(app, b"/api/conversations?a=1", "NONE").path == "/api/conversations"


def test_a_websocket_handshake_with_unreadable_headers_is_the_clients_fault(app: Sanic) -> None:
    """What Sanic raises when the websockets library refuses the handshake's headers."""
    from websockets.datastructures import Headers
    from websockets.exceptions import InvalidHeaderValue

    try:
        try:
            Headers({"Sec-WebSocket-Key": "\udcff"})
        except InvalidHeaderValue:
            # As Sanic raises it: the refusal is found by __context__ alone.
            raise SanicException("Failed to open a WebSocket connection.", status_code=500)  # noqa: B904
    except SanicException as raised:
        response = errors.render_error(REQUEST, raised)
    assert response.status == 400 and body(response)["error"]["code"] == "bad_request"
    # Any other 500 stays a 500: only the handshake's refusal is the client's.
    assert errors.render_error(REQUEST, SanicException("broken", status_code=500)).status == 500
