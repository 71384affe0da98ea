"""The HTTP edge holds every connection to a deadline: a client that trickles its request head,
a kept-alive connection left idle, a client that opens more connections than its share, and a
full server are each handled without holding a connection (or a worker) for ever — and the JMAP
push stream, the one response meant to stay open, outlives the request deadline but not its own
lifetime. Raw sockets, against a server started with short limits."""

import json
import select
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
import requests

from conftest import HTTP_TIMEOUT_S, KEYPOST_BIN, Keypost

HEADER_READ_TIMEOUT = 2
IDLE_TIMEOUT = 6
REQUEST_TIMEOUT = 3
PUSH_LIFETIME = 10
PER_SOURCE = 4
MAX_CONNECTIONS = 6

GET_HEALTH = b"GET /healthz HTTP/1.1\r\nHost: keypost.test\r\n\r\n"


@pytest.fixture(scope="module")
def keypost(request):
    """This module's own server (the `world` fixture uses it too), with short limits."""
    tmp = Path(tempfile.mkdtemp(prefix="keypost-e2e-slowloris-"))
    kp = Keypost(KEYPOST_BIN, tmp)
    kp.env.update(
        KEYPOST_LISTEN_HEADER_READ_TIMEOUT=f"{HEADER_READ_TIMEOUT}s",
        KEYPOST_LISTEN_IDLE_TIMEOUT=f"{IDLE_TIMEOUT}s",
        KEYPOST_LISTEN_REQUEST_TIMEOUT=f"{REQUEST_TIMEOUT}s",
        KEYPOST_LISTEN_PUSH_LIFETIME=f"{PUSH_LIFETIME}s",
        KEYPOST_LISTEN_MAX_CONNECTIONS_PER_SOURCE=str(PER_SOURCE),
        KEYPOST_LISTEN_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
    )
    kp.start()
    request.node._keypost = kp
    yield kp
    kp.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def connect(kp, source="127.0.0.1"):
    return socket.create_connection(("127.0.0.1", kp.port), timeout=HTTP_TIMEOUT_S,
                                    source_address=(source, 0))


def read_response(sock) -> tuple[int, dict, bytes]:
    """One response with a Content-Length body; fails if the server closes before it is whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"the server closed the connection mid-response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection mid-body"
        body += chunk
    return status, headers, body


def closed_by_server(sock, wait: float) -> bool:
    """Whether the server closes `sock` (EOF or reset) within `wait` seconds; the bytes of a
    response sent before closing are skipped."""
    sock.settimeout(wait)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def kept_alive(kp, source="127.0.0.1"):
    """A connection that has served one request and is kept open for the next."""
    sock = connect(kp, source)
    sock.sendall(GET_HEALTH)
    status, _, _ = read_response(sock)
    assert status == 200
    return sock


def test_a_client_trickling_its_request_head_is_disconnected(keypost):
    sock = connect(keypost)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: keypost.test\r\n")
    # One header line every half second, for ten times the header deadline.
    lines = HEADER_READ_TIMEOUT * 10 * 2
    cut_after = None
    for i in range(lines):
        time.sleep(0.5)
        readable, _, _ = select.select([sock], [], [], 0)
        try:
            if readable and not sock.recv(4096):
                cut_after = i
                break
            sock.sendall(f"X-Trickle-{i}: still here\r\n".encode())
        except OSError:
            cut_after = i
            break
    sock.close()
    assert cut_after is not None, "the server waited for the whole trickled head"
    assert cut_after < lines // 2, f"cut only after {cut_after} lines"
    assert requests.get(f"{keypost.url}/healthz", timeout=HTTP_TIMEOUT_S).status_code == 200


def test_an_idle_kept_alive_connection_is_closed(keypost):
    sock = kept_alive(keypost)
    # Idle longer than the header deadline: the connection still serves its next request
    # (the header deadline counts from the request's first byte).
    time.sleep(HEADER_READ_TIMEOUT + 1)
    sock.sendall(GET_HEALTH)
    assert read_response(sock)[0] == 200
    assert closed_by_server(sock, IDLE_TIMEOUT * 5), "an idle connection stayed open"
    sock.close()


def test_a_source_past_its_share_of_connections_is_refused_at_once(keypost):
    held = [kept_alive(keypost) for _ in range(PER_SOURCE)]
    extra = connect(keypost)
    answer = b""
    try:
        extra.sendall(GET_HEALTH)
        answer = extra.recv(4096)
    except ConnectionResetError:
        pass  # closed with the request unread
    except TimeoutError:
        pytest.fail("the extra connection was neither answered nor closed")
    finally:
        extra.close()
    assert answer == b"", f"the extra connection was served: {answer!r}"
    # Another source is not affected.
    other = kept_alive(keypost, "127.0.0.2")
    other.close()
    for sock in held:
        sock.close()
    # The source's connections are closed: a new one is served (once the server has seen
    # them close, which takes it a moment).
    deadline = time.monotonic() + HTTP_TIMEOUT_S
    while True:
        sock = connect(keypost)
        try:
            sock.sendall(GET_HEALTH)
            if read_response(sock)[0] == 200:
                break
        except (AssertionError, OSError):
            assert time.monotonic() < deadline, "the source stayed refused after closing"
            time.sleep(0.1)
        finally:
            sock.close()


def test_a_full_server_answers_a_new_connection_once_one_closes(keypost):
    held = [kept_alive(keypost, "127.0.0.3") for _ in range(PER_SOURCE)]
    held += [kept_alive(keypost, "127.0.0.4") for _ in range(MAX_CONNECTIONS - PER_SOURCE)]
    waiting = connect(keypost, "127.0.0.5")
    waiting.sendall(GET_HEALTH)
    waiting.settimeout(1)
    with pytest.raises(TimeoutError):
        waiting.recv(1)  # not accepted while the server is full
    held.pop().close()
    waiting.settimeout(HTTP_TIMEOUT_S)
    assert read_response(waiting)[0] == 200
    for sock in [waiting, *held]:
        sock.close()


def test_a_body_still_arriving_at_the_request_deadline_is_answered_408(keypost, world):
    sock = connect(keypost)
    sock.sendall(
        b"POST /realms/contoso/token HTTP/1.1\r\nHost: keypost.test\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
    )
    # A byte a second is fast enough for the body timeout, never for the request deadline.
    answer = b""
    for _ in range(REQUEST_TIMEOUT * 10):
        try:
            sock.sendall(b"x")
        except OSError:
            break
        readable, _, _ = select.select([sock], [], [], 1)
        if readable:
            answer = sock.recv(4096)
            break
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer.lower(), answer


def test_a_push_stream_outlives_the_request_deadline_and_ends_at_its_lifetime(keypost, world):
    token = keypost.tokens_for(world.alice)["access_token"]
    sock = connect(keypost)
    sock.sendall(
        b"GET /jmap/eventsource?types=*&closeafter=no&ping=1 HTTP/1.1\r\nHost: keypost.test\r\n"
        + f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    # Pings keep every read short: the wait for the end is bounded as a whole.
    give_up = time.monotonic() + PUSH_LIFETIME * 6
    stream = b""
    try:
        while not stream.endswith(b"0\r\n\r\n"):
            if time.monotonic() > give_up:
                pytest.fail(f"the push stream did not end at its lifetime: {stream[-300:]!r}")
            chunk = sock.recv(4096)
            if not chunk:
                break
            stream += chunk
    finally:
        sock.close()
    assert stream.startswith(b"HTTP/1.1 200 "), stream[:300]
    pings = [line for line in stream.split(b"\n") if line.startswith(b"data:")]
    assert all(json.loads(p[len(b"data:"):])["interval"] == 1 for p in pings)
    # One a second: more than the request deadline's worth arrived before it ended.
    assert len(pings) > REQUEST_TIMEOUT + 1, f"{len(pings)} pings before the stream ended"
    assert stream.endswith(b"0\r\n\r\n"), "the stream ends cleanly (its last chunk)"
