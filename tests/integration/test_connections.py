"""What a client connection may take from `serve` (service/connections.py), over real sockets.

Against a real `serve` process: oversized headers, the server's memory meanwhile, idle keep-alive
connections. Against an in-process uvicorn with the same options but short timeouts (a subclass
of the protocol): clients that stall mid-request or never send one.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

from service import cli, config, connections
from service.app import create_app
from tests.factories import APP_ID, Sql, deliver, environment, payload, poll
from tests.processes import ServiceProcess, free_port, serving

pytestmark = pytest.mark.slow

KIB = 1024
MIB = 1024 * KIB
SHORT_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def served(
    create_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """One real `serve` for the tests of this module that need a whole process."""
    url = create_database()
    with serving(environment(url), tmp_path_factory.mktemp("serve")) as (process,):
        yield process


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset ends it too)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def peak_memory_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def request_head(extra_header_bytes: int) -> bytes:
    return (
        b"GET /healthz HTTP/1.1\r\nHost: ledger\r\nX-Padding: "
        + b"a" * extra_header_bytes
        + b"\r\n\r\n"
    )


def test_headers_over_64_kib_are_answered_431_and_under_are_served(
    served: ServiceProcess,
) -> None:
    assert served.port is not None
    with connect(served.port) as sock:
        sock.sendall(request_head(70 * KIB))
        answer = read_answer(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in head
    assert body == b'{"error": "headers_too_large"}'

    with connect(served.port) as sock:
        sock.sendall(request_head(60 * KIB))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def stream_a_huge_header(port: int) -> int:
    """Send the start of a 50 MiB header; answer how many bytes went out before the server hung up."""
    sent = 0
    with connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: ledger\r\nX-Huge: ")
        with contextlib.suppress(OSError):
            while sent < 50 * MIB:
                sock.sendall(b"a" * (64 * KIB))
                sent += 64 * KIB
        read_answer(sock)
    return sent


def test_huge_unfinished_headers_cost_the_server_no_memory(served: ServiceProcess) -> None:
    assert served.port is not None
    peak_before = peak_memory_kib(served.process.pid)
    with ThreadPoolExecutor(8) as pool:
        sent = list(pool.map(stream_a_huge_header, [served.port] * 8))
    # Each was cut off after 64 KiB and whatever the sockets' buffers held, not 50 MiB.
    assert max(sent) < 16 * MIB
    assert peak_memory_kib(served.process.pid) - peak_before < 16 * KIB
    assert httpx.get(f"{served.url}/healthz").status_code == 200


def test_an_idle_keep_alive_connection_is_still_served_after_six_seconds(
    served: ServiceProcess,
) -> None:
    assert served.port is not None
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read() == b'{"status":"ok"}'
    assert conn.sock is not None
    used = conn.sock.getsockname()
    time.sleep(6)  # the idle time is what is tested: uvicorn's default closed it after 5 s
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
    assert conn.sock is not None and conn.sock.getsockname() == used
    conn.close()


def test_hundreds_of_idle_connections_do_not_stop_a_delivery(
    served: ServiceProcess, tmp_path: Path
) -> None:
    assert served.port is not None
    silent = [connect(served.port) for _ in range(150)]  # connected, never asked anything
    kept = [http.client.HTTPConnection("127.0.0.1", served.port, timeout=10) for _ in range(150)]
    try:
        for conn in kept:  # asked once, now idle between requests
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() == b'{"status":"ok"}'
        delivery = deliver(101, payload("while-crowded", start_ts=1_751_400_000))
        started = time.monotonic()
        response = httpx.post(
            f"{served.url}/v1/webhooks/agora/{APP_ID}",
            content=delivery.body,
            headers=delivery.headers,
            timeout=10,
        )
        assert (response.status_code, response.json()) == (200, {"status": "accepted"})
        assert time.monotonic() - started < 2
        for conn in kept:  # and none of the idle ones was dropped meanwhile
            local = conn.sock.getsockname() if conn.sock is not None else None
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
            assert conn.sock is not None and conn.sock.getsockname() == local
    finally:
        for sock in silent:
            sock.close()
        for conn in kept:
            conn.close()


class QuickProtocol(connections.BoundedHttpToolsProtocol):
    request_timeout_s = SHORT_TIMEOUT_S


@contextlib.contextmanager
def in_process(settings: config.Settings, **overrides: object) -> Iterator[int]:
    """`serve`'s uvicorn options with a short-timeout protocol, in a thread; yields the port."""
    options = {
        **cli._uvicorn_options(settings),
        "port": free_port(),
        "http": QuickProtocol,
        **overrides,
    }
    server = uvicorn.Server(uvicorn.Config(create_app(settings), **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        poll(lambda: server.started, timeout=10)
        yield int(options["port"])  # type: ignore[call-overload]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def seconds_until_closed(sock: socket.socket, *, trickle: bytes = b"") -> float:
    """How long until the server hangs up, sending `trickle` a byte at a time meanwhile (a byte
    sent after it closed makes the next read a reset: that is a hang-up too)."""
    started = time.monotonic()
    sock.settimeout(0.2)
    for byte in trickle:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started
        with contextlib.suppress(OSError):
            sock.send(bytes([byte]))
    sock.settimeout(10)
    read_answer(sock)
    return time.monotonic() - started


def test_a_client_stalling_in_its_headers_is_disconnected(
    make_settings: Callable[..., config.Settings],
) -> None:
    with in_process(make_settings()) as port:
        with connect(port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: ledger\r\n")
            assert SHORT_TIMEOUT_S - 0.1 < seconds_until_closed(sock) < SHORT_TIMEOUT_S + 2
        with connect(port) as sock:  # sending a byte now and then does not keep it open
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            assert seconds_until_closed(sock, trickle=b"X-Slow: 1" * 4) < SHORT_TIMEOUT_S + 2
        with connect(port) as sock:  # and the server still answers others
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: ledger\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_a_client_stalling_mid_body_is_disconnected_and_nothing_is_stored(
    make_settings: Callable[..., config.Settings], sql: Sql
) -> None:
    delivery = deliver(101, payload("stalled", start_ts=1_751_400_000))
    head = "".join(f"{name}: {value}\r\n" for name, value in delivery.headers.items())
    with in_process(make_settings()) as port, connect(port) as sock:
        sock.sendall(
            f"POST /v1/webhooks/agora/{APP_ID} HTTP/1.1\r\nHost: ledger\r\n{head}"
            f"Content-Length: {len(delivery.body)}\r\n\r\n".encode()
            + delivery.body[:-10]
        )
        assert SHORT_TIMEOUT_S - 0.1 < seconds_until_closed(sock) < SHORT_TIMEOUT_S + 2
    assert sql.count("notification") == 0


def test_a_connection_that_never_sends_a_request_is_closed_when_idle_too_long(
    make_settings: Callable[..., config.Settings],
) -> None:
    with in_process(make_settings(), timeout_keep_alive=1) as port, connect(port) as sock:
        assert seconds_until_closed(sock) < 1 + 2


def test_serve_uses_the_bounded_protocol_with_the_contract_values() -> None:
    options = cli._uvicorn_options(config.load({}))
    assert options["http"] is connections.BoundedHttpToolsProtocol
    assert options["timeout_keep_alive"] >= 75
    # A connection cap would count idle connections against real deliveries.
    assert options.get("limit_concurrency") is None
    assert connections.MAX_HEADER_BYTES == 64 * KIB
    assert connections.REQUEST_TIMEOUT_S == 30
