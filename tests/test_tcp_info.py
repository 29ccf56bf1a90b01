"""TCPInfo reads the kernel's struct tcp_info of real sockets."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator

import pytest

from raindrops import TCPInfo, _native
from raindrops.tcp_info import TCP_STATES


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        with socket.create_connection(server.getsockname(), timeout=5) as client:
            accepted, _ = server.accept()
            with accepted:
                yield server, client, accepted


def test_client_and_server_sockets_are_established(connection: tuple[socket.socket, ...]) -> None:
    _, client, accepted = connection
    client.sendall(b"x" * 1000)
    assert accepted.recv(1000)
    for sock in (client, accepted):
        info = TCPInfo(sock)
        assert info.state == TCP_STATES["ESTABLISHED"] == 1
        assert info.snd_mss > 0 and info.rcv_mss > 0 and info.snd_cwnd > 0
        assert info.rtt >= 0 and info.rttvar >= 0
        assert info.total_retrans == 0
    assert TCPInfo(client).bytes_acked >= 1000
    assert TCPInfo(accepted.fileno()).bytes_received >= 1000


def test_last_data_recv_grows_while_idle(connection: tuple[socket.socket, ...]) -> None:
    _, client, accepted = connection
    client.sendall(b"ping")
    accepted.recv(4)
    time.sleep(0.05)
    assert TCPInfo(accepted).last_data_recv >= 40


def test_listening_socket_reports_its_queue(connection: tuple[socket.socket, ...]) -> None:
    server, _, _ = connection
    with (
        socket.create_connection(server.getsockname(), timeout=5),
        socket.create_connection(server.getsockname(), timeout=5),
    ):
        time.sleep(0.01)
        info = TCPInfo(server)
        assert info.state == TCP_STATES["LISTEN"] == 10
        assert info.unacked == 2, "Linux puts the accept-queue length of a listener in unacked"
        assert info.sacked == 16, "and its backlog in sacked"


def test_states_table() -> None:
    assert TCP_STATES["CLOSING"] == 11 and TCP_STATES["SYN_SENT"] == 2 and len(TCP_STATES) == 11


def test_udp_and_unix_sockets_are_refused() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        pytest.raises((OSError, ValueError)),
    ):
        TCPInfo(udp)
    left, right = socket.socketpair()
    with left, right, pytest.raises((OSError, ValueError)):
        TCPInfo(left)


def test_closed_and_bad_descriptors_are_refused() -> None:
    sock = socket.socket()
    sock.close()
    with pytest.raises((OSError, ValueError)):
        TCPInfo(sock)
    with pytest.raises(OSError):
        TCPInfo(10_000)
    with pytest.raises((OSError, ValueError)):
        TCPInfo(-1)


@pytest.mark.parametrize("value", ["3", 1.5, None, b"x"])
def test_bad_types_are_refused(value: object) -> None:
    with pytest.raises(TypeError):
        TCPInfo(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("offset", [2**32, 2**33, 2**64])
def test_descriptor_beyond_c_int_is_refused_not_truncated(
    connection: tuple[socket.socket, ...], offset: int
) -> None:
    """2**32 + fd used to reach the kernel as fd (ctypes truncates to 32 bits): a silent read of
    another socket."""
    _, client, _ = connection
    bad = offset + client.fileno()
    with pytest.raises(ValueError) as caught:
        TCPInfo(bad)
    assert str(bad) in str(caught.value)


class _Fileno:
    def __init__(self, fd: object) -> None:
        self.fd = fd

    def fileno(self) -> object:
        return self.fd


@pytest.mark.parametrize("bad", [-1, -(2**31), 2**31, 2**31 + 5, True, False])
def test_out_of_range_descriptors_are_value_errors_naming_them(bad: int) -> None:
    for given in (bad, _Fileno(bad)):
        with pytest.raises(ValueError) as caught:
            TCPInfo(given)
        assert str(bad) in str(caught.value)


def test_largest_descriptor_reaches_the_kernel() -> None:
    with pytest.raises(OSError) as caught:
        TCPInfo(2**31 - 1)
    assert not isinstance(caught.value, ValueError)


# The listener facts ListenerSet asks a held socket for (raindrops/_native.tcp_listener).


def test_listener_facts_of_ipv4_and_ipv6_listeners() -> None:
    with (
        socket.socket() as plain,
        socket.socket() as shared,
        socket.socket(socket.AF_INET6) as v6only,
        socket.socket(socket.AF_INET6) as dual,
    ):
        plain.bind(("127.0.0.1", 0))
        plain.listen(5)
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        shared.bind(("127.0.0.1", 0))
        shared.listen(6)
        v6only.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6only.bind(("::", 0))
        v6only.listen(7)
        dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        dual.bind(("::", 0))
        dual.listen(8)
        ports = [sock.getsockname()[1] for sock in (plain, shared, v6only, dual)]
        with socket.create_connection(plain.getsockname(), timeout=5):
            time.sleep(0.01)
            facts = [_native.tcp_listener(sock.fileno()) for sock in (plain, shared, v6only, dual)]
    loopback4 = bytes([127, 0, 0, 1] + [0] * 12)
    assert [(f.listening, f.family, bytes(f.address), f.port) for f in facts] == [
        (1, socket.AF_INET, loopback4, ports[0]),
        (1, socket.AF_INET, loopback4, ports[1]),
        (1, socket.AF_INET6, bytes(16), ports[2]),
        (1, socket.AF_INET6, bytes(16), ports[3]),
    ]
    assert [(f.queued, f.backlog) for f in facts] == [(1, 5), (0, 6), (0, 7), (0, 8)]
    flags = [(f.reuseport, f.device_bound, f.v6only) for f in facts]
    assert flags == [(0, 0, 0), (1, 0, 0), (0, 0, 1), (0, 0, 0)]


def test_listener_facts_of_sockets_that_are_not_tcp_listeners(
    connection: tuple[socket.socket, socket.socket, socket.socket],
) -> None:
    _, client, accepted = connection
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix,
        socket.socket() as unbound,
    ):
        unix.bind(f"\0raindrops-test-{os.getpid()}")
        unix.listen(1)
        for sock in (client, accepted, udp, unix, unbound):
            assert _native.tcp_listener(sock.fileno()).listening == 0, sock
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(OSError) as caught:
            _native.tcp_listener(read_end)
        assert caught.value.errno == errno.ENOTSOCK
    finally:
        os.close(read_end)
        os.close(write_end)
    closed = socket.socket()
    number = closed.fileno()
    closed.close()
    with pytest.raises(OSError) as caught:
        _native.tcp_listener(number)
    assert caught.value.errno == errno.EBADF


def test_listening_descriptors_are_found_without_wrapping_them(
    connection: tuple[socket.socket, socket.socket, socket.socket],
) -> None:
    server, client, accepted = connection
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.bind(f"\0raindrops-test-{os.getpid()}")
        unix.listen(1)
        fds = [client.fileno(), server.fileno(), 0, accepted.fileno(), unix.fileno(), 2**30]
        assert _native.listening(fds) == [server.fileno(), unix.fileno()]
    assert _native.listening([]) == []
    with pytest.raises(OSError):
        _native.listening([0] * (_native.DESCRIPTORS_MAX + 1))
