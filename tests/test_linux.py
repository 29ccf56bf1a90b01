"""Listener statistics against real sockets on loopback, read from the kernel over netlink."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from servers import wait_for

from raindrops import TCPInfo, _native, linux
from raindrops.linux import ListenStats
from testsupport import processes

V4 = socket.AF_INET
V6 = socket.AF_INET6


@pytest.fixture
def sockets() -> Iterator[ExitStack]:
    """Closes every socket a test opens, whatever happens."""
    with ExitStack() as stack:
        yield stack


def listener(
    stack: ExitStack, host: str, *, port: int = 0, dual: bool = False, reuse_port: bool = False
) -> socket.socket:
    family = V6 if ":" in host else V4
    server = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
    if family == V6:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
    if reuse_port:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    server.bind((host, port))
    server.listen(4096)
    return server


def connect(stack: ExitStack, host: str, port: int) -> socket.socket:
    client = stack.enter_context(socket.create_connection((host, port), timeout=5))
    return client


def accept(stack: ExitStack, server: socket.socket) -> socket.socket:
    connection, _ = server.accept()
    return stack.enter_context(connection)


def port_of(server: socket.socket) -> int:
    return int(server.getsockname()[1])


SETTLE_TIMEOUT = 5.0


def settle(keys: str | list[str], done: Callable[[dict[str, ListenStats]], bool]) -> None:
    """Waits until done(the counts of `keys`) holds: a handshake completes asynchronously."""
    what = f"the kernel's listener counts of {keys}"
    wait_for(lambda: linux.tcp_listener_stats(keys), done, SETTLE_TIMEOUT, what)


def test_listen_stats_is_a_named_tuple_with_total() -> None:
    stats = ListenStats(active=2, queued=3)
    assert stats == (2, 3) and stats.total == 5
    assert stats.active == 2 and stats.queued == 3


def test_ipv4_exact_wildcard_and_all(sockets: ExitStack) -> None:
    server = listener(sockets, "127.0.0.1")
    port = port_of(server)
    connect(sockets, "127.0.0.1", port)
    accept(sockets, server)
    connect(sockets, "127.0.0.1", port)
    key = f"127.0.0.1:{port}"
    settle(key, lambda stats: stats.get(key) == (1, 1))
    assert linux.tcp_listener_stats([key]) == {key: (1, 1)}
    assert linux.tcp_listener_stats(f"0.0.0.0:{port}") == {f"0.0.0.0:{port}": (1, 1)}
    both = linux.tcp_listener_stats([f"0.0.0.0:{port}", key])
    assert both == {f"0.0.0.0:{port}": (1, 1), key: (1, 1)}, (
        "one semantics for one or many addresses"
    )
    assert linux.tcp_listener_stats()[key] == (1, 1)
    assert linux.tcp_listener_stats(None)[key] == (1, 1)


def test_ipv4_wildcard_listener(sockets: ExitStack) -> None:
    server = listener(sockets, "0.0.0.0")
    port = port_of(server)
    connect(sockets, "127.0.0.1", port)
    accept(sockets, server)
    connect(sockets, "127.0.0.1", port)
    key = f"0.0.0.0:{port}"
    settle(key, lambda stats: stats.get(key) == (1, 1))
    everything = linux.tcp_listener_stats()
    assert everything[key] == (1, 1)
    assert f"127.0.0.1:{port}" not in everything, (
        "connections to a wildcard listener are attributed to it"
    )
    assert linux.tcp_listener_stats(f"127.0.0.1:{port}") == {}, "no listener has that exact address"


def test_ipv6_loopback(sockets: ExitStack) -> None:
    server = listener(sockets, "::1")
    port = port_of(server)
    connect(sockets, "::1", port)
    accept(sockets, server)
    connect(sockets, "::1", port)
    connect(sockets, "::1", port)
    key = f"[::1]:{port}"
    settle(key, lambda stats: stats.get(key) == (1, 2))
    assert linux.tcp_listener_stats(f"[::]:{port}") == {f"[::]:{port}": (1, 2)}
    assert linux.tcp_listener_stats(f"[0:0:0:0:0:0:0:1]:{port}") == {key: (1, 2)}, (
        "keys are canonical"
    )
    assert linux.tcp_listener_stats()[key] == (1, 2)


def test_dual_stack_listener_counts_both_families(sockets: ExitStack) -> None:
    server = listener(sockets, "::", dual=True)
    port = port_of(server)
    connect(sockets, "127.0.0.1", port)
    accept(sockets, server)
    connect(sockets, "::1", port)
    accept(sockets, server)
    connect(sockets, "127.0.0.1", port)
    key = f"[::]:{port}"
    settle(key, lambda stats: stats.get(key) == (2, 1))
    assert linux.tcp_listener_stats()[key] == (2, 1)
    assert linux.tcp_listener_stats(f"[0:0::0]:{port}") == {key: (2, 1)}
    assert linux.tcp_listener_stats([f"[0::0]:{port}", key]) == {key: (2, 1)}, "duplicates collapse"


def test_queued_becomes_active_as_connections_are_accepted_and_closed(sockets: ExitStack) -> None:
    server = listener(sockets, "127.0.0.1")
    port = port_of(server)
    key = f"127.0.0.1:{port}"
    assert linux.tcp_listener_stats(key) == {key: (0, 0)}
    for _ in range(3):
        connect(sockets, "127.0.0.1", port)
    settle(key, lambda stats: stats.get(key) == (0, 3))
    first = accept(sockets, server)
    accept(sockets, server)
    assert linux.tcp_listener_stats(key)[key] == (2, 1)
    first.close()
    assert linux.tcp_listener_stats(key)[key] == (1, 1)
    accept(sockets, server)
    assert linux.tcp_listener_stats(key)[key] == (2, 0)


def queued_reuseport_group(sockets: ExitStack) -> tuple[list[socket.socket], str]:
    """Four SO_REUSEPORT listeners on one 127.0.0.1 port holding 12 unaccepted connections, and
    the address's key, once the kernel reports them queued."""
    group = [listener(sockets, "127.0.0.1", reuse_port=True)]
    port = port_of(group[0])
    group += [listener(sockets, "127.0.0.1", port=port, reuse_port=True) for _ in range(3)]
    for _ in range(12):
        connect(sockets, "127.0.0.1", port)
    key = f"127.0.0.1:{port}"
    settle(key, lambda stats: key in stats and stats[key].queued == 12)
    return group, key


def test_reuseport_group_is_one_entry_with_summed_queue(sockets: ExitStack) -> None:
    group, key = queued_reuseport_group(sockets)
    accepted = 0
    for server in group:
        server.setblocking(False)
        try:
            accept(sockets, server)
            accepted += 1
        except BlockingIOError:
            pass
    assert accepted >= 1
    assert linux.tcp_listener_stats(key)[key] == (accepted, 12 - accepted)
    assert linux.tcp_listener_stats()[key] == (accepted, 12 - accepted)


def test_no_listener_no_entry_and_no_placeholder(sockets: ExitStack) -> None:
    holder = listener(sockets, "127.0.0.1")
    free_port = port_of(holder)
    holder.close()
    key = f"127.0.0.1:{free_port}"
    assert linux.tcp_listener_stats(key) == {}
    assert linux.tcp_listener_stats([key, key]) == {}
    assert linux.tcp_listener_stats([]) == {}


def test_request_order_is_kept(sockets: ExitStack) -> None:
    ports = [port_of(listener(sockets, "127.0.0.1")) for _ in range(3)]
    keys = [f"127.0.0.1:{port}" for port in reversed(ports)]
    assert list(linux.tcp_listener_stats(keys)) == keys


def test_five_thousand_accepted_connections_are_counted_exactly(sockets: ExitStack) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 10_000 + 200
    if hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        server = listener(sockets, "127.0.0.1")
        port = port_of(server)
        for _ in range(5000):
            connect(sockets, "127.0.0.1", port)
            accept(sockets, server)
        key = f"127.0.0.1:{port}"
        assert linux.tcp_listener_stats(key) == {key: (5000, 0)}
        assert linux.tcp_listener_stats()[key] == (5000, 0)
        sockets.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_file_descriptor_leak_over_a_thousand_calls(sockets: ExitStack) -> None:
    server = listener(sockets, "127.0.0.1")
    key = f"127.0.0.1:{port_of(server)}"
    linux.tcp_listener_stats(key)
    before = open_fds()
    with linux.InetDiagSocket() as diag:
        for _ in range(500):
            linux.tcp_listener_stats(key)
            linux.tcp_listener_stats([key], diag)
        for _ in range(100):
            linux.tcp_listener_stats(None, diag)
            linux.unix_listener_stats()
        for bad in ("foo", "1.2.3.4:99999"):
            with pytest.raises(ValueError):
                linux.tcp_listener_stats(bad)
    assert open_fds() == before


def test_four_threads_share_one_socket(sockets: ExitStack) -> None:
    servers = [listener(sockets, "127.0.0.1") for _ in range(4)]
    keys = [f"127.0.0.1:{port_of(server)}" for server in servers]
    for index, server in enumerate(servers):
        for _ in range(index):
            connect(sockets, "127.0.0.1", port_of(server))
    expected = {key: ListenStats(0, index) for index, key in enumerate(keys)}
    settle(keys, lambda stats: stats == expected)
    errors: list[str] = []
    with linux.InetDiagSocket() as diag:

        def work(key: str) -> None:
            for _ in range(200):
                result = linux.tcp_listener_stats([key], diag)
                if result != {key: expected[key]}:
                    errors.append(f"{key}: {result}")
                if linux.tcp_listener_stats(keys, diag) != expected:
                    errors.append("multi")

        threads = [threading.Thread(target=work, args=(key,)) for key in keys]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []


def test_closed_inet_diag_socket_is_refused() -> None:
    diag = linux.InetDiagSocket()
    diag.close()
    diag.close()
    with pytest.raises(ValueError):
        linux.tcp_listener_stats(None, diag)


BAD_ADDRESSES = [
    "foo",
    "foo:80",
    "1.2.3.4:99999",
    "1.2.3.4:65536",
    "1.2.3.4:",
    "1.2.3.4",
    "1.2.3.4:-1",
    "1.2.3.4:8x",
    "1.2.3.4: 80",
    "[::1]80",
    "[::1:80",
    "::1:80",
    "[fe80::1%lo]:80",
    "localhost:80",
    "1.2.3:80",
    "256.1.1.1:80",
    "[1.2.3.4]:80",
    ":80",
    "",
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_bad_address_raises_value_error_naming_it(address: str) -> None:
    with pytest.raises(ValueError) as caught:
        linux.tcp_listener_stats(address)
    assert repr(address) in str(caught.value) or address in str(caught.value)
    with pytest.raises(ValueError):
        linux.tcp_listener_stats(["127.0.0.1:80", address])


@pytest.mark.parametrize("value", [5, [5], [None], 1.5, [b"127.0.0.1:80"]])
def test_non_string_addresses_raise_type_error(value: object) -> None:
    with pytest.raises(TypeError):
        linux.tcp_listener_stats(value)  # type: ignore[arg-type]


def unix_listener(stack: ExitStack, path: str | bytes) -> socket.socket:
    server = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    server.bind(path)
    server.listen(64)
    return server


def unix_connect(stack: ExitStack, path: str | bytes) -> socket.socket:
    client = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    client.connect(path)
    return client


def test_unix_idle_pending_and_accepted(sockets: ExitStack, tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    server = unix_listener(sockets, path)
    assert linux.unix_listener_stats([path]) == {path: (0, 0)}
    assert linux.unix_listener_stats()[path] == (0, 0)
    for _ in range(3):
        unix_connect(sockets, path)
    assert linux.unix_listener_stats([path]) == {path: (0, 3)}
    accept(sockets, server)
    assert linux.unix_listener_stats([path]) == {path: (1, 2)}
    assert linux.unix_listener_stats()[path] == (1, 2)
    missing = str(tmp_path / "missing.sock")
    assert linux.unix_listener_stats([missing]) == {}


def test_unix_non_utf8_path(sockets: ExitStack, tmp_path: Path) -> None:
    path = os.fsencode(tmp_path) + b"/caf\xe9.sock"
    server = unix_listener(sockets, path)
    unix_connect(sockets, path)
    accept(sockets, server)
    unix_connect(sockets, path)
    key = os.fsdecode(path)
    assert linux.unix_listener_stats([path]) == {key: (1, 1)}
    assert linux.unix_listener_stats([key]) == {key: (1, 1)}
    assert linux.unix_listener_stats()[key] == (1, 1)


def test_unix_abstract_socket(sockets: ExitStack) -> None:
    name = f"\0raindrops-test-{os.getpid()}"
    unix_listener(sockets, name)
    unix_connect(sockets, name)
    key = "@" + name[1:]
    assert linux.unix_listener_stats()[key] == (0, 1)
    assert linux.unix_listener_stats([key]) == {key: (0, 1)}


# Every entry point that takes `listeners` reads them through linux.ListenerSet: one set of errors.


def _wsgi_app(environ: object, start_response: object) -> list[bytes]:
    return []


def _middleware(listeners: object) -> object:
    from raindrops import Middleware

    return Middleware(_wsgi_app, listeners=listeners)  # type: ignore[arg-type]


def _watcher(listeners: object) -> object:
    from raindrops import Watcher

    return Watcher(listeners)  # type: ignore[arg-type]


ENTRY_POINTS = {"ListenerSet": linux.ListenerSet, "Middleware": _middleware, "Watcher": _watcher}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(
    ("listeners", "named"),
    [
        ([5], "5"),
        ([None], "None"),
        (["127.0.0.1:80", ["127.0.0.1:81"]], "['127.0.0.1:81']"),
        ([b"/run/app.sock"], "b'/run/app.sock'"),
        (5, "int"),
        ("1.2.3.4:80", "'1.2.3.4:80'"),
        (b"/run/app.sock", "bytes"),
    ],
)
def test_bad_listeners_are_type_errors_naming_the_item(
    entry: str, listeners: object, named: str
) -> None:
    with pytest.raises(TypeError) as caught:
        ENTRY_POINTS[entry](listeners)  # type: ignore[operator]
    assert named in str(caught.value) and "listeners" in str(caught.value)


def test_middleware_path_none_is_a_type_error() -> None:
    from raindrops import Middleware

    with pytest.raises(TypeError) as caught:
        Middleware(_wsgi_app, path=None)  # type: ignore[arg-type]
    assert "path" in str(caught.value) and "NoneType" in str(caught.value)


# A listener at the same path in another mount namespace is another socket.

SQUATTER = """
import socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen(128)
clients = [socket.socket(socket.AF_UNIX) for _ in range(55)]
for client in clients:
    client.connect(sys.argv[1])
accepted = [server.accept()[0] for _ in range(5)]
print("ready", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def squatter(directory: Path) -> Iterator[None]:
    """Another mount namespace with a tmpfs over `directory`, where a process listens at
    directory/app.sock with 5 accepted and 50 queued connections, until the block ends."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    script = 'mount -t tmpfs raindrops-squat "$1" && exec "$2" -c "$3" "$1/app.sock"'
    command = ["unshare", "--mount", "sh", "-c", script, "sh", str(directory)]
    command += [sys.executable, SQUATTER]
    with processes.running(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        if process.stdout.readline() != "ready\n":
            process.wait(10)
            reason = process.stderr.read().strip()
            if process.returncode != 0 and ("ermission" in reason or "not permitted" in reason):
                pytest.skip(f"no mount namespace here: {reason}")
            raise AssertionError(f"the squatter did not start: {reason}")
        yield


def test_unix_listener_in_another_mount_namespace_is_not_ours(
    sockets: ExitStack, tmp_path: Path
) -> None:
    directory = tmp_path / "run"
    directory.mkdir()
    path = str(directory / "app.sock")
    with squatter(directory):
        server = unix_listener(sockets, path)
        for _ in range(3):
            unix_connect(sockets, path)
        accept(sockets, server)
        assert linux.unix_listener_stats([path]) == {path: (1, 2)}
        assert linux.unix_listener_stats()[path] == (1, 2)
        assert linux.ListenerSet([path]).read() == {path: (1, 2)}
        assert linux.ListenerSet(None).read()[path] == (1, 2)
        server.close()
        os.unlink(path)
        assert linux.unix_listener_stats([path]) == {}, "no socket at that path for us"
        assert path not in linux.unix_listener_stats()


def test_mount_device_from_mountinfo_in_the_kernel_encoding() -> None:
    mountinfo = (
        b"22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        b"65 43 0:39 / /tmp/with\\040space rw - overlay overlay rw,lowerdir=/l\n"
        b"70 22 259:1048577 /sub /srv rw - btrfs /dev/x rw\n"
        b"garbage\n"
        b"71 22 x:1 / /bad rw - tmpfs t rw\n"
        b"7 1 1:2 / /7 rw - tmpfs t rw"
    )
    assert linux.mount_device(mountinfo, 22) == 254 << 20 == linux.kernel_device(254, 0)
    assert linux.mount_device(mountinfo, 65) == 39
    assert linux.mount_device(mountinfo, 70) == 259 << 20 | 1048577
    assert linux.mount_device(mountinfo, 7) == 1 << 20 | 2, "the last line, without its newline"
    for missing in (2, 43, 71, 1):
        assert linux.mount_device(mountinfo, missing) is None, missing
    assert linux.mount_device(b"", 22) is None


def test_fdinfo_mount_id() -> None:
    assert linux.fdinfo_mount_id(b"pos:\t0\nflags:\t012100000\nmnt_id:\t65\nino:\t9\n") == 65
    assert linux.fdinfo_mount_id(b"pos:\t0\nflags:\t0\n") is None
    assert linux.fdinfo_mount_id(b"mnt_id:\tx\n") is None


def test_the_socket_file_found_is_the_one_unix_diag_reports(
    sockets: ExitStack, tmp_path: Path
) -> None:
    """Inode and device of the file at the path, as this process finds them (through its
    mount's device, not stat's), are what unix_diag says the listener is bound to."""
    path = os.fsencode(tmp_path / "s.sock")
    unix_listener(sockets, path)
    with linux.InetDiagSocket() as diag:
        bound = [
            (entry.vfs_inode, entry.vfs_device)
            for entry in diag._unix_all_listeners()
            if bytes(entry.name[: entry.name_len]) == path
        ]
    assert bound == [linux._SocketFiles().at(path)]
    assert bound[0][0] == os.stat(path).st_ino & 0xFFFF_FFFF


def test_unix_listeners_on_tmpfs_and_on_disk_are_found(sockets: ExitStack, tmp_path: Path) -> None:
    """The socket file's device as this process computes it matches unix_diag's on both kinds of
    file system (kernel encoding, not stat's)."""
    shm = Path("/dev/shm") / f"raindrops-test-{os.getpid()}.sock"
    paths = [str(tmp_path / "disk.sock"), str(shm)]
    try:
        for path in paths:
            unix_listener(sockets, path)
            unix_connect(sockets, path)
        assert linux.unix_listener_stats(paths) == {path: (0, 1) for path in paths}
        found = linux.unix_listener_stats()
        assert {path: found.get(path) for path in paths} == {path: (0, 1) for path in paths}
    finally:
        shm.unlink(missing_ok=True)


def test_a_path_that_is_not_that_socket_has_no_stats(sockets: ExitStack, tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    unix_listener(sockets, str(path))
    unix_connect(sockets, str(path))
    moved = tmp_path / "moved.sock"
    path.rename(moved)
    path.write_text("not a socket")
    assert linux.unix_listener_stats([str(path)]) == {}, "a file, not the listener"
    assert linux.unix_listener_stats([str(moved)]) == {}, "the listener is bound to app.sock"
    assert str(path) not in linux.unix_listener_stats()


OVERLAY_READER = """
import os, socket, sys
from raindrops import linux
path = os.path.join(sys.argv[1], "app.sock")
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(8)
client = socket.socket(socket.AF_UNIX)
client.connect(path)
print(linux.unix_listener_stats([path])[path], linux.unix_listener_stats()[path])
"""


def test_unix_listener_on_overlayfs_is_found(tmp_path: Path) -> None:
    """overlayfs gives its files a device of its own in stat(); unix_diag's is the mount's."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    for name in ("lower", "upper", "work", "merged"):
        (tmp_path / name).mkdir()
    options = f"lowerdir={tmp_path}/lower,upperdir={tmp_path}/upper,workdir={tmp_path}/work"
    script = f'mount -t overlay overlay -o {options} "$1" && exec "$2" -c "$3" "$1"'
    command = ["unshare", "--mount", "sh", "-c", script, "sh", str(tmp_path / "merged")]
    result = processes.run([*command, sys.executable, OVERLAY_READER], timeout=60, text=True)
    if result.returncode != 0 and "mount" in result.stderr:
        pytest.skip(f"no overlay mount here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("ListenStats") == [
        "",
        "(active=0, queued=1) ",
        "(active=0, queued=1)\n",
    ]


# A listener this process holds answers for its own accept queue (TCP_INFO); `active` always
# comes from a dump of the connections. Every path must give the numbers netlink gives.


def netlink_paths(keys: list[str]) -> list[dict[str, ListenStats]]:
    """The same listeners read every way that does not ask a held socket: each address alone
    (the port in the request's id), all at once (a filter program when their ports differ),
    and every listener of the host."""
    alone: dict[str, ListenStats] = {}
    for key in keys:
        alone.update(linux.tcp_listener_stats([key]))
    everything = linux.tcp_listener_stats(None)
    return [
        alone,
        linux.tcp_listener_stats(keys),
        {k: everything[k] for k in keys if k in everything},
    ]


def own_paths(keys: list[str]) -> list[dict[str, ListenStats]]:
    """The same listeners read through ListenerSet, which asks the sockets this process holds."""
    own = linux.ListenerSet.of_this_process().read()
    return [linux.ListenerSet(keys).read(), {key: own[key] for key in keys if key in own}]


def own_queues(*keys: str) -> dict[str, int]:
    """The queues this process's listeners answer for alone, without netlink."""
    addresses = [linux._parse_tcp_address(key) for key in keys]
    return linux._HeldListeners().read(addresses)[1]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_full_accept_queue_from_tcp_info_equals_inet_diag(sockets: ExitStack, host: str) -> None:
    """A listen(8) socket that nobody accepts from holds 9 connections (the kernel queues until
    the queue is longer than the backlog); TCP_INFO's tcpi_unacked says so, as idiag_rqueue."""
    backlog = 8
    family = V6 if ":" in host else V4
    server = sockets.enter_context(socket.socket(family, socket.SOCK_STREAM))
    server.bind((host, 0))
    server.listen(backlog)
    port = port_of(server)
    key = f"[{host}]:{port}" if family == V6 else f"{host}:{port}"
    for _ in range(backlog + 1):
        connect(sockets, host, port)
    settle(key, lambda stats: stats.get(key) == (0, backlog + 1))
    late = sockets.enter_context(socket.socket(family, socket.SOCK_STREAM))
    late.setblocking(False)
    late.connect_ex((host, port))  # the queue is full: its handshake does not complete
    time.sleep(0.05)
    listener = _native.tcp_listener(server.fileno())
    assert (listener.queued, listener.backlog) == (backlog + 1, backlog)
    assert TCPInfo(server).unacked == backlog + 1
    assert own_queues(key) == {key: backlog + 1}
    expected = {key: ListenStats(0, backlog + 1)}
    assert netlink_paths([key]) == [expected] * 3
    assert own_paths([key]) == [expected] * 2
    assert linux.ListenerSet([key]).queued() == {key: backlog + 1}


def test_every_kind_of_held_listener_reads_as_netlink_does(sockets: ExitStack) -> None:
    """Accepted and queued connections on v4, v4 wildcard, v6 and dual-stack listeners: what the
    held sockets report, with `active` from a dump of ESTABLISHED sockets alone, equals every
    netlink path."""
    servers = {
        "127.0.0.1": listener(sockets, "127.0.0.1"),
        "0.0.0.0": listener(sockets, "0.0.0.0"),
        "::1": listener(sockets, "::1"),
        "::": listener(sockets, "::", dual=True),
    }
    clients = {"127.0.0.1": ["127.0.0.1"], "0.0.0.0": ["127.0.0.1"], "::1": ["::1"]}
    clients["::"] = ["127.0.0.1", "::1"]
    expected: dict[str, ListenStats] = {}
    for index, (host, server) in enumerate(servers.items()):
        port = port_of(server)
        for source in clients[host]:
            for _ in range(index + 1):
                connect(sockets, source, port)
        accepted = len(clients[host]) * (index + 1) - 1
        for _ in range(accepted):
            accept(sockets, server)
        key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        expected[key] = ListenStats(accepted, 1)
    keys = list(expected)
    settle(keys, lambda stats: stats == expected)
    assert own_queues(*keys) == {key: 1 for key in keys}
    assert netlink_paths(keys) == [expected] * 3
    assert own_paths(keys) == [expected] * 2
    assert linux.ListenerSet(keys).queued() == {key: 1 for key in keys}


def test_a_v4_address_counts_a_v4_mapped_listener_and_its_connections(sockets: ExitStack) -> None:
    """An IPv6 socket bound to ::ffff:127.0.0.1 is what "127.0.0.1:P" and "0.0.0.0:P" report,
    connections included: a dump for an IPv4 address must take IPv6 sockets too."""
    server = sockets.enter_context(socket.socket(V6, socket.SOCK_STREAM))
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.bind(("::ffff:127.0.0.1", 0))
    server.listen(16)
    port = port_of(server)
    for _ in range(3):
        connect(sockets, "127.0.0.1", port)
    accept(sockets, server)
    accept(sockets, server)
    keys = [f"127.0.0.1:{port}", f"0.0.0.0:{port}", f"[::ffff:127.0.0.1]:{port}"]
    expected = {key: ListenStats(2, 1) for key in keys}
    settle(keys, lambda stats: stats == expected)
    assert netlink_paths(keys)[:2] == [expected] * 2
    assert linux.tcp_listener_stats(None)[keys[2]] == (2, 1)
    assert own_paths(keys)[0] == expected
    assert linux.ListenerSet.of_this_process().read()[keys[2]] == (2, 1)


def test_a_reuseport_group_is_read_over_netlink(sockets: ExitStack) -> None:
    """Each socket of an SO_REUSEPORT group has its own queue; the address's is their sum."""
    group, key = queued_reuseport_group(sockets)
    assert sum(_native.tcp_listener(server.fileno()).queued for server in group) == 12
    assert own_queues(key) == {}, "no socket of the group answers for the address alone"
    assert own_paths([key]) == [{key: ListenStats(0, 12)}] * 2
    assert linux.ListenerSet([key]).queued() == {key: 12}


def test_a_v6only_wildcard_is_not_alone_beside_a_v4_mapped_listener(sockets: ExitStack) -> None:
    """bind() lets another socket listen on [::ffff:127.0.0.1]:P beside an IPV6_V6ONLY [::]:P,
    and "[::]:P" counts both; so the [::] socket's own queue is not the address's."""
    wildcard = listener(sockets, "::")
    port = port_of(wildcard)
    mapped = sockets.enter_context(socket.socket(V6, socket.SOCK_STREAM))
    mapped.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    mapped.bind(("::ffff:127.0.0.1", port))
    mapped.listen(16)
    connect(sockets, "::1", port)
    for _ in range(2):
        connect(sockets, "127.0.0.1", port)
    key = f"[::]:{port}"
    settle(key, lambda stats: stats.get(key) == (0, 3))
    assert _native.tcp_listener(wildcard.fileno()).queued == 1
    assert own_queues(key) == {}
    assert own_paths([key]) == [{key: ListenStats(0, 3)}] * 2
    assert linux.ListenerSet([key]).queued() == {key: 3}


def test_a_device_bound_listener_is_read_over_netlink(sockets: ExitStack) -> None:
    """Sockets bound to other devices may listen on the same address and port."""
    server = sockets.enter_context(socket.socket(V4, socket.SOCK_STREAM))
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
    except PermissionError as error:
        pytest.skip(f"SO_BINDTODEVICE needs CAP_NET_RAW here: {error}")
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    connect(sockets, "127.0.0.1", port_of(server))
    key = f"127.0.0.1:{port_of(server)}"
    settle(key, lambda stats: stats.get(key) == (0, 1))
    assert _native.tcp_listener(server.fileno()).device_bound == 1
    assert own_queues(key) == {}
    assert own_paths([key]) == [{key: ListenStats(0, 1)}] * 2


def test_held_queues_need_no_netlink(sockets: ExitStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """queued() of listeners this process holds alone never opens a netlink socket."""
    servers = [listener(sockets, "127.0.0.1"), listener(sockets, "::1")]
    for server in servers:
        connect(sockets, *server.getsockname()[:2])
    keys = [f"127.0.0.1:{port_of(servers[0])}", f"[::1]:{port_of(servers[1])}"]
    settle(keys, lambda stats: stats == {key: (0, 1) for key in keys})

    def no_netlink(self: linux.ListenerSet) -> linux.InetDiagSocket:
        raise AssertionError("a netlink socket was asked for")

    monkeypatch.setattr(linux.ListenerSet, "_socket", no_netlink)
    assert linux.ListenerSet(keys).queued() == {key: 1 for key in keys}
    own = linux.ListenerSet.of_this_process().queued()
    assert {key: own[key] for key in keys} == {key: 1 for key in keys}


def test_a_closed_listener_drops_out_and_its_reused_descriptor_is_not_trusted(
    sockets: ExitStack,
) -> None:
    """A held listener closed and its descriptor number taken by another listener: neither the
    own set nor an explicit address reports the old one, and the new one shows at once."""
    first = socket.socket()
    first.bind(("127.0.0.1", 0))
    first.listen(8)
    old_key = f"127.0.0.1:{port_of(first)}"
    own = linux.ListenerSet.of_this_process()
    explicit = linux.ListenerSet([old_key])
    assert own.read()[old_key] == (0, 0) and explicit.read() == {old_key: (0, 0)}
    number = first.fileno()
    first.close()
    second = sockets.enter_context(socket.socket())
    assert second.fileno() == number, "the lowest free descriptor is reused"
    second.bind(("127.0.0.1", 0))
    second.listen(8)
    connect(sockets, "127.0.0.1", port_of(second))
    new_key = f"127.0.0.1:{port_of(second)}"
    settle(new_key, lambda stats: stats.get(new_key) == (0, 1))
    found = own.read()
    assert old_key not in found and found[new_key] == (0, 1)
    assert explicit.read() == {} and explicit.queued() == {}
    assert own.queued()[new_key] == 1


def test_new_listeners_are_found_within_the_rescan_interval(
    sockets: ExitStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The descriptors are scanned at most every HELD_RESCAN_S seconds: a gevent worker holding
    thousands of connections would otherwise read them all at every read."""
    scans: list[int] = []
    scan = linux._scan_held

    def counted() -> linux._Held:
        scans.append(1)
        return scan()

    monkeypatch.setattr(linux, "_scan_held", counted)
    own = linux.ListenerSet.of_this_process()
    first = listener(sockets, "127.0.0.1")
    first_key = f"127.0.0.1:{port_of(first)}"
    for _ in range(5):
        assert first_key in own.read() and first_key in own.queued()
    assert len(scans) == 1
    second_key = f"127.0.0.1:{port_of(listener(sockets, '127.0.0.1'))}"
    assert second_key not in own.read(), "found at the next scan, not before"
    monkeypatch.setattr(linux, "HELD_RESCAN_S", 0.0)
    assert second_key in own.read()
    assert len(scans) == 2


BLOCKING_READER = """
import _socket, os, socket, sys
app_end, _ = _socket.socketpair()  # blocking, as a C library's connection is
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(8)
if sys.argv[1] == "gevent":
    from gevent import monkey
    monkey.patch_all()
else:
    socket.setdefaulttimeout(30.0)
from raindrops import linux
key = "127.0.0.1:%d" % server.getsockname()[1]
own = linux.ListenerSet.of_this_process()
found = (own.read()[key], own.queued()[key], linux.ListenerSet([key]).queued()[key])
print(found, os.get_blocking(app_end.fileno()), os.get_blocking(server.fileno()), flush=True)
"""


@pytest.mark.parametrize("mode", ["gevent", "setdefaulttimeout"])
def test_reading_held_listeners_leaves_sockets_blocking(mode: str) -> None:
    """The held listeners are found and asked without making any socket non-blocking (see
    test_gevent's test of process_listeners)."""
    done = processes.run([sys.executable, "-c", BLOCKING_READER, mode], timeout=60, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "(ListenStats(active=0, queued=0), 0, 0) True True\n"


def _facts(key: str, **fields: int) -> _native.TcpListener:
    address = linux._parse_tcp_address(key)
    facts = _native.TcpListener(family=address.family, port=address.port, listening=1)
    facts.address[: len(address.packed)] = address.packed
    facts.queue_known = 1
    for name, value in fields.items():
        setattr(facts, name, value)
    return facts


@pytest.mark.parametrize(
    ("key", "fields", "alone"),
    [
        ("127.0.0.1:80", {}, True),
        ("0.0.0.0:80", {}, True),
        ("[::]:80", {}, True),
        ("[::1]:80", {"v6only": 1}, True),
        ("[::]:80", {"v6only": 1}, False),
        ("127.0.0.1:80", {"reuseport": 1}, False),
        ("127.0.0.1:80", {"device_bound": 1}, False),
        ("127.0.0.1:80", {"queue_known": 0}, False),
        ("127.0.0.1:80", {"listening": 0}, None),
        ("127.0.0.1:80", {"port": 81}, None),
        ("127.0.0.1:80", {"family": socket.AF_INET6}, None),
    ],
)
def test_which_held_listener_answers_alone(key: str, fields: dict[str, int], alone: bool) -> None:
    """None: the descriptor no longer listens on the address (a new scan follows)."""
    assert linux._listens_alone(_facts(key, **fields), linux._parse_tcp_address(key)) is alone


def test_a_held_listener_on_another_address_is_not_trusted() -> None:
    facts = _facts("127.0.0.2:80")
    assert linux._listens_alone(facts, linux._parse_tcp_address("127.0.0.1:80")) is None
