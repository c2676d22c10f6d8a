"""Bad bytes (API.md, "Hostile clients and faults") against the real server process.

No request, whatever its method, path, headers or body, gets a 5xx answer or
leaves a traceback in the log, and no token ever reaches the log. Requests are
written byte by byte on raw sockets, so they can carry what no HTTP library
would send: bytes that are not UTF-8, NULs, broken request lines.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support.server import ServerProcess
from tests.support.waiting import wait_until

READ_TIMEOUT_S = 10.0
MAX_BODY_BYTES = 64 * 1024
HUGE_ID = "100000000000000000000"
SERVER_ENV = {
    "CHIME_DEMO_DELAY_MS": "20",  # answers stay running for a while: live reads, cancels, caps
    "CHIME_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    "CHIME_PUSH_ALLOW_PRIVATE": "1",  # no DNS look-ups for the endpoints the fuzzer subscribes
    "CHIME_LOG_LEVEL": "DEBUG",
}


@dataclass
class Answer:
    status: int | None  # None: the server closed without answering
    head: bytes


def exchange(port: int, request: bytes) -> Answer:
    """Send raw bytes on a fresh connection; read the answer's status line and headers only."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the body was read (413 and friends): the answer may still be there
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                head += chunk
        except ConnectionResetError:
            pass
    if not head:
        return Answer(None, head)
    status_line = head.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), f"not an HTTP answer: {head[:200]!r}"
    return Answer(int(status_line.split(b" ")[1]), head)


def http_request(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"",
                 version: bytes = b"HTTP/1.1") -> bytes:
    lines = [method + b" " + target + b" " + version, *(name + b": " + value for name, value in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass
class World:
    """What the fuzzer aims at: two users, their channels and conversations."""

    server: ServerProcess
    token: str
    stranger: str
    finished: str
    running: str
    conversation: str
    theirs: str

    @property
    def tokens(self) -> list[str]:
        return [self.token, self.stranger]

    @property
    def origin(self) -> bytes:
        return self.server.url.encode()


def make_world(server: ServerProcess) -> World:
    with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
        token, stranger = (http.post("/api/users").json()["token"] for _ in range(2))

        def submit(user: str, message: str) -> dict:
            response = http.post("/api/chat", json={"message": message},
                                 headers={"Authorization": f"Bearer {user}"})
            assert response.status_code == 201, response.text
            return response.json()

        first = submit(token, "hi")
        theirs = submit(stranger, "hello")["channel"]

        def finished() -> bool:
            channel = http.get(f"/api/channels/{first['channel']}", headers={"Authorization": f"Bearer {token}"})
            return channel.json()["status"] != "running"

        wait_until(finished, READ_TIMEOUT_S * 3, "the first answer to finish")
        running = submit(token, "tell me a long story " * 20)["channel"]
    return World(server, token, stranger, first["channel"], running, first["conversation_id"], theirs)


# ---- what a hostile client sends -----------------------------------------------------------

JUNK_PIECES = ["a", "Z", "0", "-", "_", ".", "..", "/", "%", "%00", "%ff", "%2e", "%2F", "%zz", "~", ";", "?",
               "=", "&", "#", "+", "é", "\x00", "\x7f", "\t", "\\", "{}", "'", '"', "<", "%C0%AE", "x" * 300]
RESUME_VALUES = ["0", "3", "0003", "18446744073709551616", HUGE_ID, "9" * 3000, "-1", "+1", "1.5", "1e3", "abc",
                 "", " 7 ", "nan", "inf", "٣", "0x10"]
WAIT_VALUES = ["0", "0.2", "1", "31", "-1", "nan", "inf", "1e400", "abc", ""]  # valid ones short: no long holds
STATIC_NAMES = ["", "js", "js/", "index.html", "styles.css", "favicon.svg", "sw.js", "../app.py", "%2e%2e/app.py",
                "..%2fapp.py", "%00", "a%00b", "index.html%00.js", "vendor", "vendor/", "//etc/passwd",
                "%2fetc%2fpasswd", "x" * 3000, "js/../../settings.py", "%ff%fe"]
# Every route of API.md (the /v1 and /api/ai ones too, as they come) with the methods it answers.
ROUTES = {
    "/api/users": [b"POST"], "/api/chat": [b"POST"], "/api/channels/{channel}/events": [b"GET"],
    "/api/channels/{channel}/ws": [b"GET"], "/api/channels/{channel}/events.json": [b"GET"],
    "/api/channels/{channel}/cancel": [b"POST"], "/api/channels/{channel}/presence": [b"POST"],
    "/api/channels/{channel}": [b"GET"], "/api/conversations": [b"GET"],
    "/api/conversations/{conversation}": [b"GET", b"DELETE"], "/api/push/vapid-public-key": [b"GET"],
    "/api/push/subscriptions": [b"POST", b"DELETE"], "/": [b"GET"], "/c/{channel}": [b"GET"], "/sw.js": [b"GET"],
    "/static/{static}": [b"GET", b"HEAD"], "/healthz": [b"GET"], "/metrics": [b"GET"], "/api/{junk}": [b"GET"],
    "/{junk}": [b"GET"], "/v1/models": [b"GET"], "/v1/chat/completions": [b"POST"], "/v1/responses": [b"POST"],
    "/v1/responses/{channel}": [b"GET"], "/api/ai/chat": [b"POST"], "/api/ai/chat/{conversation}/stream": [b"GET"],
}
METHODS = [b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS", b"TRACE", b"CONNECT", b"get",
           b"PROPFIND", b"G\xffT", b"POST\x00"]

junk = st.lists(st.sampled_from(JUNK_PIECES), max_size=8).map("".join)
raw_junk = st.binary(max_size=64)
id_text = st.one_of(st.sampled_from(RESUME_VALUES), junk)


def credentials(world: World) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    token = st.sampled_from(world.tokens).map(str.encode)
    authorization = st.one_of(
        token.map(lambda t: b"Bearer " + t), token.map(lambda t: b"bearer  " + t + b" "),
        token.map(lambda t: b"Basic " + t),
        st.sampled_from([b"Bearer", b"Bearer ", b"Bearer \xff\xfe\xfd", b"\xff\xfe", b"Bearer caf\xe9",
                         b"Bearer " + b"x" * 3000]),
        raw_junk.map(lambda b: b"Bearer " + b),
    )
    cookie = st.one_of(
        token.map(lambda t: b"chime_token=" + t), token.map(lambda t: b"a=b; chime_token=" + t + b"; c"),
        st.sampled_from([b"chime_token=\xff\xfe", b"chime_token=", b"chime_token", b"=;=;", b"\xff=\xfe",
                         b'chime_token="quoted"', b"chime_token=a; chime_token=b"]),
        raw_junk.map(lambda b: b"chime_token=" + b),
    )
    return st.lists(st.one_of(authorization.map(lambda v: (b"Authorization", v)),
                              cookie.map(lambda v: (b"Cookie", v))), max_size=2)


def extra_headers(world: World) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    value = st.one_of(st.sampled_from([b"", b"\xff\xfe", b"a" * 7000, b"\x00", b"x\ty", b"\x80abc"]), raw_junk)
    header = st.one_of(
        st.tuples(st.just(b"Origin"), st.one_of(st.sampled_from([world.origin, b"http://evil.example", b"null",
                                                                  b"http://127.0.0.1:1", b"\xff", b""]), value)),
        st.tuples(st.just(b"Last-Event-ID"), st.one_of(id_text.map(str.encode), value)),
        st.tuples(st.just(b"Accept"), st.sampled_from([b"text/event-stream", b"*/*", b"application/json", b"\xff"])),
        st.tuples(st.just(b"Content-Type"), st.sampled_from([b"application/json", b"text/plain", b"\xff",
                                                             b"multipart/form-data; boundary=x",
                                                             b"application/json; charset=latin-1"])),
        st.tuples(st.sampled_from([b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host", b"Forwarded",
                                   b"If-Modified-Since", b"Range", b"Host", b"Expect", b"Accept-Encoding"]), value),
        st.tuples(st.sampled_from([b"X-\xff", b"X Y", b"\x00", b"X-Long-" + b"n" * 500]), value),
    )
    return st.lists(header, max_size=4)


def websocket_upgrade() -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    good = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"Sec-WebSocket-Version", b"13")]
    bad_key = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Key", b"\xff"),
               (b"Sec-WebSocket-Version", b"99")]
    return st.sampled_from([[], [], good, bad_key, [(b"Upgrade", b"websocket")]])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["message", "conversation_id", "visible", "endpoint", "keys", "p256dh", "auth", "id", "messages"]


def bodies(world: World) -> st.SearchStrategy[bytes]:
    shaped = st.dictionaries(st.sampled_from(FIELDS), st.one_of(
        JSON_VALUES, st.sampled_from([world.conversation, world.finished, "http://127.0.0.1:1/push", " \n\t "]),
        st.just(33_000).map("x".__mul__),  # built when drawn: a long literal makes every failure report huge
    ), max_size=4).map(lambda body: json.dumps(body).encode())
    return st.one_of(
        st.just(b""), shaped, shaped, JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.sampled_from([{"message": "hello"}, {"message": "again", "conversation_id": world.conversation},
                         {"visible": True}, {"visible": False}, {"endpoint": "http://127.0.0.1:1/push"}]
                        ).map(lambda body: json.dumps(body).encode()),
        st.just(json.dumps({"endpoint": "http://127.0.0.1:1/push", "keys": {
            "p256dh": "BOr1" * 20, "auth": "c2VjcmV0"}}).encode()),
        st.sampled_from([b'{"message": 1e999999}', b'{"visible": 123456789012345678901234567890}', b"1" * 5000,
                         b"[" * 5000, b'{"message": "\\ud800"}', b'{"message": "\xff\xfe"}', b"\xef\xbb\xbf{}",
                         b"null"]),
        st.sampled_from([2000, MAX_BODY_BYTES + 10]).map(lambda n: b"{" + b'"a":1,' * n + b'"message":"x"}'),
        st.binary(max_size=300),
    )


def target(world: World, route: st.SearchStrategy[str], plausible: bool = False) -> st.SearchStrategy[bytes]:
    """A request target on ``route``; a plausible one percent-encodes its junk, so it parses and gets routed."""
    seg = st.one_of(junk, id_text).map(lambda text: quote(text, safe="%-._~")) if plausible else junk
    channel = st.one_of(st.sampled_from([world.finished, world.running, world.theirs, "no-such-channel"]), seg)
    conversation = st.one_of(st.sampled_from([world.conversation, "no-such-conversation"]), seg)
    static = st.one_of(st.sampled_from(STATIC_NAMES), seg)
    path = st.builds(lambda route, c, v, s, j: route.format(channel=c, conversation=v, static=s, junk=j),
                     route, channel, conversation, static, seg)
    name = st.sampled_from(["last_event_id", "after", "wait", "access_token", "stream", "startIndex", "x"])
    value = st.one_of(id_text, st.sampled_from(WAIT_VALUES), st.sampled_from(world.tokens), junk)
    if plausible:
        value = value.map(lambda text: quote(text, safe="%-._~"))
    query = st.lists(st.tuples(name, value), max_size=3).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
    oddity = st.sampled_from([""] if plausible else ["", "", "*", "http://[::1", "http://127.0.0.1", "//double"])
    return st.builds(lambda o, p, q: (o + p + ("?" + q if q else "")).encode("utf-8", "surrogatepass"),
                     oddity, path, query)


def requests(world: World) -> st.SearchStrategy[bytes]:
    """Three in four are plausible (the routes' own methods, a valid identity more often than
    not, well-formed headers) so that they reach the handlers; the rest are hostile throughout."""
    def build(method, path, version, creds, upgrade, extra, body, chunked) -> bytes:
        headers = [(b"Host", b"127.0.0.1"), *creds, *upgrade, *extra]
        if not upgrade:
            headers.append((b"Connection", b"close"))
        if chunked and body:
            headers.append((b"Transfer-Encoding", b"chunked"))
            body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        elif body or method == b"POST":
            headers.append((b"Content-Length", str(len(body)).encode()))
        return http_request(method, path, headers, body, version)

    token = st.sampled_from(world.tokens).map(str.encode)
    identity: st.SearchStrategy[list[tuple[bytes, bytes]]] = st.one_of(
        st.just([]), token.map(lambda t: [(b"Authorization", b"Bearer " + t)]),
        token.map(lambda t: [(b"Cookie", b"chime_token=" + t)]), credentials(world))

    def plausible_request(route: str) -> st.SearchStrategy[bytes]:
        method = st.one_of(st.sampled_from(ROUTES[route]), st.sampled_from(ROUTES[route]),
                           st.sampled_from([b"GET", b"POST", b"DELETE", b"HEAD"]))
        return st.builds(build, method, target(world, st.just(route), plausible=True), st.just(b"HTTP/1.1"),
                         identity, websocket_upgrade(), plausible_headers(world), bodies(world), st.just(False))

    plausible = st.sampled_from(list(ROUTES)).flatmap(plausible_request)
    hostile = st.builds(build, st.sampled_from(METHODS), target(world, st.sampled_from(list(ROUTES))),
                        st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1\x00"]),
                        credentials(world), websocket_upgrade(), extra_headers(world), bodies(world), st.booleans())
    return st.one_of(plausible, plausible, plausible, hostile)


def plausible_headers(world: World) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    header = st.one_of(
        st.tuples(st.just(b"Origin"), st.sampled_from([world.origin, b"http://evil.example", b"null"])),
        st.tuples(st.just(b"Last-Event-ID"), id_text.map(str.encode)),
        st.tuples(st.just(b"Accept"), st.sampled_from([b"text/event-stream", b"*/*", b"application/json"])),
        st.tuples(st.just(b"Content-Type"), st.sampled_from([b"application/json", b"text/plain"])),
    )
    return st.lists(header, max_size=3, unique_by=lambda h: h[0])


# ---- the tests ----------------------------------------------------------------------------------

@pytest.fixture
def world(make_server: Callable[..., ServerProcess]) -> World:
    return make_world(make_server(SERVER_ENV))


def assert_a_clean_log(world: World) -> None:
    log = world.server.log()
    assert "Traceback" not in log, log[-6000:]
    for token in world.tokens:
        assert token not in log, "a token reached the server log"


def test_no_request_gets_a_5xx_or_leaves_a_traceback(world: World) -> None:
    statuses: Counter[int | None] = Counter()

    @settings(max_examples=900, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(requests(world), min_size=1, max_size=10))
    def no_request_fails(batch: list[bytes]) -> None:
        for request in batch:
            note(repr(request[:600]))
            answer = exchange(world.server.port, request)
            statuses[answer.status] += 1
            assert answer.status is None or answer.status < 500, f"{request[:2000]!r}\n{answer.head!r}"

    no_request_fails()
    assert world.server.process is not None and world.server.process.poll() is None, "the server died"
    assert httpx.get(f"{world.server.url}/healthz", timeout=READ_TIMEOUT_S).status_code == 200
    assert_a_clean_log(world)
    # The fuzzer reached the handlers, with and without a valid identity, not only the parser.
    assert sum(statuses.values()) >= 1500, statuses
    assert all(statuses[status] > 0 for status in (200, 201, 400, 401, 404)), statuses


def raw_get(target: bytes, *headers: tuple[bytes, bytes]) -> bytes:
    return http_request(b"GET", target, [(b"Host", b"127.0.0.1"), *headers, (b"Connection", b"close")])


SEEN_IN_THE_WILD = [  # each was a 500 with a traceback, or no answer at all
    (raw_get(b"/static/"), 404),
    (raw_get(b"/static/js/"), 404),
    (raw_get(b"/static/a%00b"), 404),
    (raw_get(b"/static/%00"), 404),
    (raw_get(b"/static/%2e%2e/app.py"), 404),
    (raw_get(b"/static/" + b"x" * 4000), 404),
    (raw_get(b"/api/conversations", (b"Authorization", b"Bearer \xff\xfe\xfd")), 401),
    (raw_get(b"/api/conversations", (b"Cookie", b"chime_token=\xff\xfe\xfd")), 401),
    (raw_get(b"/api/channels/x/events", (b"Cookie", b"chime_token=caf\xe9")), 401),
    (raw_get(b"/api/x\x00/events"), 400),
    (raw_get(b"http://[::1/api/conversations"), 400),
    (raw_get(b"/api/channels/x/ws", (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
             (b"Sec-WebSocket-Key", b"\xff"), (b"Sec-WebSocket-Version", b"13")), 400),
]


def test_the_bad_bytes_seen_in_the_wild_get_4xx(world: World) -> None:
    answers = [exchange(world.server.port, request) for request, _ in SEEN_IN_THE_WILD]
    assert [answer.status for answer in answers] == [status for _, status in SEEN_IN_THE_WILD]
    for answer in answers:
        assert b"content-type: application/json" in answer.head.lower(), answer.head
    assert exchange(world.server.port, raw_get(b"/static/styles.css")).status == 200  # files are still served
    assert_a_clean_log(world)


def test_a_token_in_a_url_the_server_refuses_stays_out_of_the_log(world: World) -> None:
    for url in (b"/api/channels/x\x00/events?access_token=", b"http://[::1/api/channels/x/events?access_token=",
                b"/api/channels/x/events?access%5Ftoken="):
        answer = exchange(world.server.port, raw_get(url + world.token.encode()))
        assert answer.status is not None and 400 <= answer.status < 500, answer.head
    assert_a_clean_log(world)


def test_a_huge_resume_point_is_past_the_end_on_every_transport(world: World) -> None:
    channel, auth = world.finished, {"Authorization": f"Bearer {world.token}"}
    with httpx.Client(base_url=world.server.url, headers=auth, timeout=READ_TIMEOUT_S) as http:
        assert http.get(f"/api/channels/{channel}/events", headers={"Last-Event-ID": HUGE_ID}).status_code == 204
        assert http.get(f"/api/channels/{channel}/events", params={"last_event_id": HUGE_ID}).status_code == 204
        page = http.get(f"/api/channels/{channel}/events.json", params={"after": HUGE_ID})
        assert page.status_code == 200
        assert page.json()["events"] == [] and page.json()["finished"] is True
    with connect(f"{world.server.ws_url}/api/channels/{channel}/ws?last_event_id={HUGE_ID}",
                 additional_headers=auth, open_timeout=READ_TIMEOUT_S) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=READ_TIMEOUT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert_a_clean_log(world)
