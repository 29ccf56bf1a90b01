"""Listener statistics on Linux: how many connections wait in each listener's
accept queue (`queued`) and how many accepted ones are open (`active`).

The numbers come from the kernel's socket tables over NETLINK_SOCK_DIAG
(inet_diag for TCP, unix_diag for unix sockets) and are counted in the native
library, so a host with tens of thousands of connections costs no Python
object per socket. /proc/net/tcp is never parsed; /proc/net/unix only when the
kernel lacks unix_diag.

One rule for any number of TCP addresses (raindrops' single- and multi-address
modes disagreed): a query "A:P" reports the listeners on port P whose local
address is A, or every listener of A's family on P when A is a wildcard
(0.0.0.0 also covers IPv4-mapped IPv6 listeners, [::] every IPv6 listener,
dual-stack ones included). `active` counts accepted ESTABLISHED connections
whose local address matches by the same rule. A requested address with no
listener is left out of the result.

A TCP listener that this process holds (a prefork worker inherits its
master's) is asked for its accept queue directly, with getsockopt(TCP_INFO),
which reports a LISTEN socket's queue in tcpi_unacked (Linux >= 2.6.24), the
number inet_diag reports: microseconds, whatever the number of connections on
the host. Only when no other socket can listen on its address (no
SO_REUSEPORT group, no SO_BINDTODEVICE, not an IPV6_V6ONLY wildcard) does the
socket alone answer for the address; other listeners are read over netlink.
`active` always takes a dump of the connections: one walk of the kernel's
table, asking only for ESTABLISHED sockets on the listeners' port (in the
request's id.idiag_sport: the kernel's cheapest test) and, for IPv6 addresses
alone, only IPv6 sockets.

A unix socket path counts the socket this process sees at that path: unix_diag
lists the sockets of every mount namespace sharing the network namespace, and
another user may bind the same path in a mount namespace of their own. Each
path listener comes with the socket file it is bound to (inode and device),
and only those bound to the file found at the path here are counted; a
listener whose file was removed or replaced is left out. Abstract names
("@name") have no file and belong to the network namespace. The /proc/net/unix
fallback has no socket files and matches by name only.
"""

from __future__ import annotations

import _socket
import errno
import ipaddress
import os
import re
import socket
import stat
import time
import weakref
from collections.abc import Iterable
from typing import NamedTuple, Union

from raindrops import _native
from raindrops._process import PerProcess, ProcessLock

__all__ = [
    "InetDiagSocket",
    "ListenStats",
    "ListenerSet",
    "process_listeners",
    "tcp_listener_stats",
    "unix_listener_stats",
]

_PORT_MAX = 65535
_AF_INET = socket.AF_INET.value
_AF_INET6 = socket.AF_INET6.value
# Errors from sock_diag that mean "no unix_diag here": read /proc/net/unix instead.
_UNIX_DIAG_MISSING = frozenset(
    {
        errno.ENOENT,
        errno.EOPNOTSUPP,
        errno.EPROTONOSUPPORT,
        errno.EAFNOSUPPORT,
        errno.EACCES,
        errno.EPERM,
    }
)
_PROC_NET_UNIX = "/proc/net/unix"
_SO_ACCEPTCON = 0x10000
_SS_CONNECTING = 2
_SS_CONNECTED = 3

UnixPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


class ListenStats(NamedTuple):
    """Counts for one listener: accepted connections and connections waiting to be accepted."""

    active: int
    queued: int

    @property
    def total(self) -> int:
        return self.active + self.queued


class InetDiagSocket:
    """A reusable NETLINK_SOCK_DIAG socket: pass it as `sock=` to skip opening
    one per call when polling. Threads may share it: each query holds its lock,
    because a netlink dump must not interleave with another on one socket.
    """

    def __init__(self) -> None:
        self._lock = ProcessLock()  # a thread holding it at fork does not lock the child out
        self._fd: int | None = _native.diag_open()
        # Closes the fd if the object is dropped without close(): no fd leak in loops. Not at
        # interpreter exit, where the process's end closes it anyway: closing it earlier could
        # pull it from under a daemon thread still sampling (EBADF, or a reused fd number).
        self._finalizer = weakref.finalize(self, _native.diag_close, self._fd)
        self._finalizer.atexit = False  # type: ignore[misc]  # a documented attribute

    def fileno(self) -> int:
        fd = self._fd
        if fd is None:
            raise ValueError("I/O operation on a closed InetDiagSocket")
        return fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        """Closes the socket; closing twice is harmless."""
        with self._lock.here():
            self._fd = None
            self._finalizer()

    def __enter__(self) -> InetDiagSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"fd={self._fd}"
        return f"<raindrops.linux.InetDiagSocket {state}>"

    def _tcp_stats(
        self, queries: list[_native.TcpQuery], states: int = _native.TCP_STATES_ALL
    ) -> list[_native.TcpResult]:
        with self._lock.here():
            return _native.tcp_stats(self.fileno(), queries, states)

    def _tcp_all_listeners(self) -> list[_native.TcpResult]:
        with self._lock.here():
            return _native.tcp_all_listeners(self.fileno())

    def _unix_stats(self, entries: list[_native.UnixEntry]) -> list[_native.UnixEntry]:
        with self._lock.here():
            return _native.unix_stats(self.fileno(), entries)

    def _unix_all_listeners(self) -> list[_native.UnixEntry]:
        with self._lock.here():
            return _native.unix_all_listeners(self.fileno())


# TCP addresses.


class _TcpAddress(NamedTuple):
    key: str
    family: int
    packed: bytes
    port: int


def _format_ipv6(address: ipaddress.IPv6Address) -> str:
    # IPv4-mapped addresses as inet_ntop (and raindrops, and Python >= 3.13) spell them.
    mapped = address.ipv4_mapped
    if mapped is not None:
        return f"::ffff:{mapped}"
    return address.compressed


def _key(family: int, packed: bytes, port: int) -> str:
    if family == _AF_INET:
        return f"{ipaddress.IPv4Address(packed[:4])}:{port}"
    return f"[{_format_ipv6(ipaddress.IPv6Address(packed[:16]))}]:{port}"


def _bad_address(text: str, why: str) -> ValueError:
    return ValueError(f"invalid TCP listener address {text!r}: {why}")


def _parse_port(text: str, port_text: str) -> int:
    if not port_text:
        raise _bad_address(text, "the port is missing")
    if not (port_text.isascii() and port_text.isdigit()):
        raise _bad_address(text, f"the port {port_text!r} is not a decimal number")
    port = int(port_text)
    if port > _PORT_MAX:
        raise _bad_address(text, f"the port {port} is above {_PORT_MAX}")
    return port


def _parse_tcp_address(text: object) -> _TcpAddress:
    """Parses "1.2.3.4:80" or "[::1]:80" strictly: numeric addresses only, no
    DNS, no scope ids, since the kernel reports numeric local addresses."""
    if not isinstance(text, str):
        raise TypeError(f"a TCP listener address must be a str, not {type(text).__name__}")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _bad_address(text, "']' not found")
        host, rest = text[1:close], text[close + 1 :]
        if not rest.startswith(":"):
            raise _bad_address(text, "':' and a port must follow ']'")
        if "%" in host:
            raise _bad_address(text, "scoped IPv6 addresses are not supported")
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad_address(text, f"{host!r} is not an IPv6 address") from None
        port = _parse_port(text, rest[1:])
        family = _AF_INET6
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            raise _bad_address(text, "the ':port' is missing")
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            raise _bad_address(
                text, f"{host!r} is not an IPv4 address (IPv6 goes in brackets)"
            ) from None
        port = _parse_port(text, port_text)
        family = _AF_INET
    return _TcpAddress(_key(family, ip.packed, port), family, ip.packed, port)


def _tcp_addresses(addrs: str | Iterable[str]) -> list[_TcpAddress]:
    """Parses every address before any I/O; duplicates (after canonicalisation) kept once."""
    if isinstance(addrs, str):
        items: Iterable[object] = [addrs]
    elif isinstance(addrs, (bytes, bytearray, memoryview)):
        raise TypeError(f"addrs must be a str or an iterable of str, not {type(addrs).__name__}")
    else:
        try:
            items = iter(addrs)
        except TypeError:
            raise TypeError(
                f"addrs must be a str or an iterable of str, not {type(addrs).__name__}"
            ) from None
    unique: dict[str, _TcpAddress] = {}
    for item in items:
        address = _parse_tcp_address(item)
        unique.setdefault(address.key, address)
    return list(unique.values())


def _tcp_query(address: _TcpAddress) -> _native.TcpQuery:
    query = _native.TcpQuery()
    query.address[: len(address.packed)] = address.packed
    query.family = address.family
    query.port = address.port
    query.wildcard = int(not any(address.packed))
    return query


def tcp_listener_stats(
    addrs: str | Iterable[str] | None = None, sock: InetDiagSocket | None = None
) -> dict[str, ListenStats]:
    """Listener statistics keyed "ADDR:PORT" ("0.0.0.0:8080", "[::1]:8080").

    `addrs=None` reports every TCP listener of the host (each accepted
    connection counted for the listener of its exact address, else for the
    wildcard listener on its port). Otherwise the requested addresses, in
    request order, without those that have no listener.
    """
    if sock is not None and not isinstance(sock, InetDiagSocket):
        raise TypeError(f"sock must be an InetDiagSocket or None, not {type(sock).__name__}")
    addresses = None if addrs is None else _tcp_addresses(addrs)
    if addresses is not None and not addresses:
        return {}
    if sock is None:
        with InetDiagSocket() as own:
            return _tcp_listener_stats(addresses, own)
    return _tcp_listener_stats(addresses, sock)


def _tcp_listener_stats(
    addresses: list[_TcpAddress] | None, sock: InetDiagSocket, queues: dict[str, int] | None = None
) -> dict[str, ListenStats]:
    """The listeners' counts; `queues` holds the accept queues already read off listeners this
    process holds (their addresses need no LISTEN socket from the dump, and count as present)."""
    if addresses is None:
        found = sock._tcp_all_listeners()
        return {
            _key(result.family, bytes(result.address), result.port): ListenStats(
                result.active, result.queued
            )
            for result in found
        }
    known = queues or {}
    # Every queue known already: the dump needs no LISTEN socket.
    every_queue = all(address.key in known for address in addresses)
    states = _native.TCP_ESTABLISHED if every_queue else _native.TCP_STATES_ALL
    results = sock._tcp_stats([_tcp_query(address) for address in addresses], states)
    stats: dict[str, ListenStats] = {}
    for address, result in zip(addresses, results, strict=True):
        queued = known.get(address.key)
        if queued is not None:
            stats[address.key] = ListenStats(result.active, queued)
        elif result.listeners > 0:
            stats[address.key] = ListenStats(result.active, result.queued)
    return stats


def _tcp_listener_queues(addresses: list[_TcpAddress], sock: InetDiagSocket) -> dict[str, int]:
    """The accept queues of `addresses` from a dump of the LISTEN sockets alone: the kernel walks
    its table of listeners (16,384 buckets on a 24 GiB machine) and never the connections."""
    results = sock._tcp_stats([_tcp_query(address) for address in addresses], _native.TCP_LISTEN)
    return {
        address.key: result.queued
        for address, result in zip(addresses, results, strict=True)
        if result.listeners > 0
    }


# Unix sockets.


def _unix_key(name: bytes) -> str:
    """Path names as the file system spells them; abstract names as "@name"
    with inner NULs as "@", the spelling of ss(8) and /proc/net/unix."""
    if name.startswith(b"\0"):
        return "@" + os.fsdecode(name[1:].replace(b"\0", b"@"))
    return os.fsdecode(name)


def _unix_name(path: object) -> bytes:
    """The kernel's name for a requested path: "@x" and "\\0x" are abstract."""
    if isinstance(path, (str, bytes, os.PathLike)):
        raw = os.fsencode(path)
    else:
        raise TypeError(
            f"a unix socket path must be str, bytes or os.PathLike, not {type(path).__name__}"
        )
    if raw.startswith(b"@"):
        raw = b"\0" + raw[1:]
    if not raw:
        raise ValueError("invalid unix socket path '': it is empty")
    if b"\0" in raw[1:] and not raw.startswith(b"\0"):
        raise ValueError(f"invalid unix socket path {path!r}: it contains a NUL byte")
    if len(raw) > _native.UNIX_NAME_BYTES_MAX:
        raise ValueError(
            f"invalid unix socket path {path!r}: longer than {_native.UNIX_NAME_BYTES_MAX} bytes"
        )
    return raw


def _unix_names(paths: UnixPath | Iterable[UnixPath]) -> list[bytes]:
    if isinstance(paths, (str, bytes, os.PathLike)):
        items: Iterable[object] = [paths]
    else:
        try:
            items = iter(paths)
        except TypeError:
            raise TypeError(
                f"paths must be a path or an iterable of paths, not {type(paths).__name__}"
            ) from None
    return list(dict.fromkeys(_unix_name(item) for item in items))


# Which socket a path names. unix_diag lists the sockets of every mount namespace
# that shares our network namespace: another user in another mount namespace may
# bind "our" path there. Each path socket comes with its socket file (inode and
# device, UNIX_DIAG_VFS); only those bound to the file this process sees at the
# path are that path's listeners.

_PROC_SELF_MOUNTINFO = "/proc/self/mountinfo"
_PROC_SELF_FDINFO = "/proc/self/fdinfo"
_MINOR_BITS = 20
"""The kernel's internal dev_t is major << 20 | minor: what unix_diag reports, what
/proc/self/mountinfo prints as major:minor, and not what stat() returns."""
_INODE_MASK = 0xFFFF_FFFF
"""unix_diag reports the socket file's inode number in 32 bits."""


class SocketFile(NamedTuple):
    """A socket file as unix_diag names it: inode (low 32 bits), device (major << 20 | minor)."""

    inode: int
    device: int


_NO_FILE = SocketFile(0, 0)
"""What an abstract name is bound to: no file. Abstract names belong to the network namespace,
so the name alone tells its sockets apart."""


def kernel_device(major: int, minor: int) -> int:
    """A device number in the kernel's internal encoding, as unix_diag reports it."""
    return major << _MINOR_BITS | minor


_MOUNTINFO_DEVICE = rb"^%d [0-9]+ ([0-9]+):([0-9]+) "
_FDINFO_MOUNT_ID = re.compile(rb"^mnt_id:\s*([0-9]+)$", re.MULTILINE)
_PROC_FILE_BYTES_MAX = 64 << 20
_PROC_READ_BYTES = 64 << 10


def mount_device(mountinfo: bytes, mount_id: int) -> int | None:
    """The device (kernel_device) of mount `mount_id`'s file system, from /proc/self/mountinfo.

    A file's stat() device is not always its file system's: btrfs reports a
    device per subvolume, and unix_diag the file system's (the superblock's),
    which mountinfo prints. One search, not a parse: a host may have thousands of mounts.
    """
    found = re.search(_MOUNTINFO_DEVICE % mount_id, mountinfo, re.MULTILINE)
    return None if found is None else kernel_device(int(found[1]), int(found[2]))


def fdinfo_mount_id(fdinfo: bytes) -> int | None:
    """The mnt_id of a /proc/self/fdinfo/FD file: the mount the descriptor's file is on."""
    found = _FDINFO_MOUNT_ID.search(fdinfo)
    return None if found is None else int(found[1])


def _read(path: str) -> bytes | None:
    """A /proc file's text (bounded), None if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        while size < _PROC_FILE_BYTES_MAX:
            chunk = os.read(fd, _PROC_READ_BYTES)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


class _SocketFiles:
    """The socket files this process sees at paths, for one reading: each path looked up once,
    /proc/self/mountinfo read at most once."""

    def __init__(self) -> None:
        self._mountinfo: bytes | None = None
        self._seen: dict[bytes, SocketFile | None] = {}

    def at(self, name: bytes) -> SocketFile | None:
        """The socket file at `name` (a path as bound), _NO_FILE for an abstract name, None
        when this process sees no socket there (missing, not a socket, not searchable)."""
        if name.startswith(b"\0"):
            return _NO_FILE
        if name not in self._seen:
            self._seen[name] = self._look_up(name)
        return self._seen[name]

    def _look_up(self, name: bytes) -> SocketFile | None:
        try:
            fd = os.open(name, os.O_PATH | os.O_CLOEXEC)
        except (OSError, ValueError):
            return None
        try:
            status = os.fstat(fd)
            if not stat.S_ISSOCK(status.st_mode):
                return None
            device = self._mount_device(fd)
        finally:
            os.close(fd)
        if device is None:
            device = kernel_device(os.major(status.st_dev), os.minor(status.st_dev))
        return SocketFile(status.st_ino & _INODE_MASK, device)

    def _mount_device(self, fd: int) -> int | None:
        """The device of the file system `fd` is on, from its mount; None where /proc lacks it."""
        fdinfo = _read(f"{_PROC_SELF_FDINFO}/{fd}")
        mount_id = None if fdinfo is None else fdinfo_mount_id(fdinfo)
        if mount_id is None:
            return None
        if self._mountinfo is None:
            self._mountinfo = _read(_PROC_SELF_MOUNTINFO) or b""
        return mount_device(self._mountinfo, mount_id)


def _unix_entry(name: bytes, file: SocketFile) -> _native.UnixEntry:
    entry = _native.UnixEntry()
    entry.name_len = len(name)
    entry.name[: len(name)] = name
    entry.vfs_inode, entry.vfs_device = file
    return entry


def _entry_name(entry: _native.UnixEntry) -> bytes:
    return bytes(entry.name[: entry.name_len])


def unix_listener_stats(
    paths: UnixPath | Iterable[UnixPath] | None = None,
) -> dict[str, ListenStats]:
    """Unix listener statistics keyed by path ("@name" for abstract sockets).

    `paths=None` reports every unix listener; otherwise the requested paths
    (str, bytes or path-like; one or many), in request order, without those
    that have no listener. Paths are matched as bound, not resolved, and a path
    counts the socket this process sees there: a listener bound to the same
    path in another mount namespace (another file) is left out, and so is one
    whose socket file was removed. Where the kernel lacks unix_diag
    (/proc/net/unix), paths are matched by name only.
    """
    names = None if paths is None else _unix_names(paths)
    if names is not None and not names:
        return {}
    files = _SocketFiles()
    try:
        if names is None:
            return _unix_all_listener_stats(files)
        return _unix_query_stats(names, files)
    except OSError as error:
        if error.errno not in _UNIX_DIAG_MISSING:
            raise
        return _proc_unix_listener_stats(names)


def _unix_query_stats(names: list[bytes], files: _SocketFiles) -> dict[str, ListenStats]:
    asked = [(name, file) for name in names if (file := files.at(name)) is not None]
    if not asked:
        return {}
    with InetDiagSocket() as sock:
        entries = sock._unix_stats([_unix_entry(name, file) for name, file in asked])
    return {
        _unix_key(name): ListenStats(entry.active, entry.queued)
        for (name, _), entry in zip(asked, entries, strict=True)
        if entry.listeners > 0
    }


def _unix_all_listener_stats(files: _SocketFiles) -> dict[str, ListenStats]:
    """Every listener bound to the file this process sees at its path (or abstract)."""
    with InetDiagSocket() as sock:
        found = sock._unix_all_listeners()
    return {
        _unix_key(_entry_name(entry)): ListenStats(entry.active, entry.queued)
        for entry in found
        if files.at(_entry_name(entry)) == (entry.vfs_inode, entry.vfs_device)
    }


_PROC_UNIX_LINE = re.compile(
    rb"^\s*[0-9A-Fa-f]+: [0-9A-Fa-f]+ [0-9A-Fa-f]+ ([0-9A-Fa-f]+) [0-9A-Fa-f]+ "
    rb"([0-9A-Fa-f]+) +(\d+) (.+)$"
)


def parse_proc_net_unix(text: bytes) -> dict[str, list[int]]:
    """Counts from /proc/net/unix: {key: [listeners, active, queued]}.

    A listener has __SO_ACCEPTCON in its flags; connections waiting in its
    accept queue are named SS_CONNECTING sockets with no inode; accepted ones
    are named SS_CONNECTED sockets (client sockets are unnamed).
    """
    counts: dict[str, list[int]] = {}
    lines = text.split(b"\n")[1:]
    parsed = [match.groups() for match in map(_PROC_UNIX_LINE.match, lines) if match is not None]
    for flags, _, _, path in parsed:
        if int(flags, 16) & _SO_ACCEPTCON:
            counts.setdefault(os.fsdecode(path), [0, 0, 0])[0] += 1
    for flags, state, inode, path in parsed:
        entry = counts.get(os.fsdecode(path))
        if entry is None or int(flags, 16) & _SO_ACCEPTCON:
            continue
        if int(state, 16) == _SS_CONNECTING and int(inode) == 0:
            entry[2] += 1
        elif int(state, 16) == _SS_CONNECTED:
            entry[1] += 1
    return counts


def _proc_unix_listener_stats(names: list[bytes] | None) -> dict[str, ListenStats]:
    with open(_PROC_NET_UNIX, "rb") as proc:
        counts = parse_proc_net_unix(proc.read())
    # /proc prints abstract names with a leading "@" and NULs as "@", like _unix_key.
    keys = list(counts) if names is None else [_unix_key(name) for name in names]
    return {key: ListenStats(counts[key][1], counts[key][2]) for key in keys if key in counts}


# ---------------------------------------------------------------------------
# The listeners a process holds (a prefork worker inherits its master's).

_PROC_SELF_FD = "/proc/self/fd"
_FDS_MAX = _native.DESCRIPTORS_MAX
_NOT_TOUCHED = socket.SOCK_STREAM | socket.SOCK_NONBLOCK


def _listener_key(sock: _socket.socket) -> str | None:
    """The key of a listening stream socket (TCP or unix), None for any other socket."""
    stream = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
    if not stream or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return None
    name = sock.getsockname()
    if sock.family == socket.AF_INET:
        return _key(_AF_INET, socket.inet_pton(socket.AF_INET, name[0]), name[1])
    if sock.family == socket.AF_INET6:
        return _key(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, name[0]), name[1])
    if sock.family == socket.AF_UNIX and name:
        return _unix_key(name if isinstance(name, bytes) else os.fsencode(name))
    return None


def _held_key(fd: int) -> str | None:
    """The listener key of descriptor `fd` of this process, None if it is no listening socket."""
    try:
        # _socket, not socket: gevent's socket class (or a default timeout) would switch
        # the descriptor to non-blocking under its owner; SOCK_NONBLOCK here says "leave it".
        sock = _socket.socket(type=_NOT_TOUCHED, fileno=fd)
    except OSError:
        return None
    try:
        return _listener_key(sock)
    except OSError:
        return None
    finally:
        sock.detach()


class _Held(NamedTuple):
    """The listening sockets one scan of this process's descriptors found."""

    keys: list[str]
    """Every listener's key, in descriptor order, each once."""
    tcp: list[_TcpAddress]
    unix: list[bytes]
    descriptors: dict[str, int]
    """TCP key -> the first descriptor found listening there."""


def _scan_held() -> _Held:
    """Every listening socket among this process's descriptors. Only the listening ones are
    wrapped in a socket object: a process may hold thousands of connections."""
    numbers = sorted(int(name) for name in os.listdir(_PROC_SELF_FD) if name.isdigit())
    descriptors: dict[str, int] = {}
    keys: dict[str, None] = {}
    for fd in _native.listening(numbers[:_FDS_MAX]):
        key = _held_key(fd)
        if key is None:
            continue
        keys.setdefault(key)
        if not is_unix_name(key):
            descriptors.setdefault(key, fd)
    tcp = [_parse_tcp_address(key) for key in keys if not is_unix_name(key)]
    unix = [_unix_name(key) for key in keys if is_unix_name(key)]
    return _Held(list(keys), tcp, unix, descriptors)


def process_listeners() -> list[str]:
    """Keys of every listening TCP and unix stream socket open in this process.

    A prefork worker inherits the master's listeners, so this finds what the
    server listens on without any configuration.
    """
    return _scan_held().keys


HELD_RESCAN_S = 10.0
"""How long one scan of this process's descriptors stands for a ListenerSet. A scan reads every
descriptor (milliseconds for a worker holding thousands of connections); between scans each
listener found is checked at every read (one native call), so a closed one drops out at once
and a new one shows within this long."""


def _listens_alone(listener: _native.TcpListener, address: _TcpAddress) -> bool | None:
    """Whether the socket `listener` describes is the only one that can listen on `address`;
    None when it no longer listens there (closed, or its descriptor reused).

    Without SO_REUSEPORT no other socket can listen on its address and port (bind refuses
    them), nor on any address a wildcard covers; except sockets bound to another device
    (SO_BINDTODEVICE, or a link-local scope), and a v4-mapped IPv6 socket beside an
    IPV6_V6ONLY "[::]" one, which the "[::]:P" address also counts. False too when TCP_INFO
    did not tell the queue (an emulator may not have it)."""
    if not listener.listening or (listener.family, listener.port) != (address.family, address.port):
        return None
    if bytes(listener.address[: len(address.packed)]) != address.packed:
        return None
    v6only_wildcard = listener.v6only and not any(address.packed)
    shared = listener.reuseport or listener.device_bound or v6only_wildcard
    return bool(listener.queue_known) and not shared


def _own_queues(held: _Held, addresses: list[_TcpAddress]) -> dict[str, int] | None:
    """The accept queues of those `addresses` that a listener this process holds answers for
    alone; None when a descriptor found by the scan no longer listens on its address."""
    queues: dict[str, int] = {}
    for address in addresses:
        fd = held.descriptors.get(address.key)
        if fd is None:
            continue
        try:
            listener = _native.tcp_listener(fd)
        except OSError:
            return None
        alone = _listens_alone(listener, address)
        if alone is None:
            return None
        if alone:
            queues[address.key] = listener.queued
    return queues


class _HeldListeners:
    """This process's listening sockets (scanned at most every HELD_RESCAN_S seconds) and the
    accept queues read straight from them. Threads may share it: a scan replaces the snapshot
    whole, and two threads scanning at once only repeat each other's work."""

    def __init__(self) -> None:
        self._held: _Held | None = None
        self._scanned_at = 0.0

    def _current(self) -> _Held:
        held = self._held
        if held is None or time.monotonic() - self._scanned_at > HELD_RESCAN_S:
            held = self._rescan()
        return held

    def _rescan(self) -> _Held:
        held = _scan_held()
        self._held, self._scanned_at = held, time.monotonic()
        return held

    def read(self, addresses: list[_TcpAddress] | None) -> tuple[_Held, dict[str, int]]:
        """The listeners held, and the queues of those among `addresses` (None: every TCP one
        held) that answer alone. A listener found gone makes a new scan at once."""
        held = self._current()
        queues = _own_queues(held, held.tcp if addresses is None else addresses)
        if queues is None:
            held = self._rescan()
            queues = _own_queues(held, held.tcp if addresses is None else addresses)
        return held, queues or {}


# ---------------------------------------------------------------------------
# Which listeners to report: what the middleware, the Watcher and the CLI share.


def is_unix_name(name: str) -> bool:
    """A unix socket is named by a path ("/run/app.sock") or an abstract name ("@app")."""
    return name.startswith(("/", "@"))


def _listener_names(listeners: Iterable[object] | None) -> list[str] | None:
    """The names of `listeners`, refused with a TypeError naming the culprit: a caller's typo
    (a single address for a list, a socket object for its name) must not surface later as an
    AttributeError from deep inside, or as a list of one-character addresses."""
    if listeners is None:
        return None
    if isinstance(listeners, (str, bytes)):
        raise TypeError(
            f"listeners must be a list of addresses, not a single "
            f"{type(listeners).__name__} {listeners!r}"
        )
    try:
        items = list(listeners)
    except TypeError:
        raise TypeError(
            f"listeners must be a list of addresses or None, not {type(listeners).__name__}"
        ) from None
    names: list[str] = []
    for name in items:
        if not isinstance(name, str):
            raise TypeError(
                f"listeners must be addresses (str), not {type(name).__name__} {name!r}"
            )
        names.append(name)
    return names


class ListenerSet:
    """The listeners to report, parsed once, and read through one netlink socket per process.

    `ListenerSet(None)` is every TCP and unix listener of the host;
    `ListenerSet(["127.0.0.1:8080", "/run/app.sock"])` those (bad addresses
    raise ValueError now, not at each read; a single string, or an item that is
    not a str, is a TypeError naming it); `ListenerSet([])` none;
    `ListenerSet.of_this_process()` the listening sockets this process holds
    (a prefork worker inherits its master's), looked for again at least every
    HELD_RESCAN_S seconds.

    A TCP listener this process holds answers for its own accept queue (TCP_INFO) when no
    other socket can listen on its address; the others, and `active`, come over netlink.
    """

    def __init__(self, listeners: Iterable[str] | None) -> None:
        names = _listener_names(listeners)
        self.everything = names is None
        self.own = False
        self._tcp = _tcp_addresses([name for name in names or () if not is_unix_name(name)])
        self._unix = [_unix_name(name) for name in names or () if is_unix_name(name)]
        self.keys: tuple[str, ...] = tuple(
            dict.fromkeys(
                [address.key for address in self._tcp] + [_unix_key(name) for name in self._unix]
            )
        )
        """The requested listeners' canonical names ("[::1]:80" for "[0:0::1]:80")."""
        self._diag: PerProcess[InetDiagSocket] = PerProcess()
        self._held: PerProcess[_HeldListeners] = PerProcess()

    @classmethod
    def of_this_process(cls) -> ListenerSet:
        found = cls([])
        found.own = True
        return found

    @classmethod
    def own_or(cls, listeners: Iterable[str] | None) -> ListenerSet:
        """A middleware's choice: `listeners`, or with None the process's own (inherited) ones."""
        return cls.of_this_process() if listeners is None else cls(listeners)

    def read(self) -> dict[str, ListenStats]:
        """Statistics of the listeners that exist now; requested ones without one are left out."""
        if self.everything:
            stats = _tcp_listener_stats(None, self._socket())
            stats.update(unix_listener_stats(None))
            return stats
        tcp, unix, queues = self._listeners()
        stats = _tcp_listener_stats(tcp, self._socket(), queues) if tcp else {}
        if unix:
            stats.update(unix_listener_stats(unix))
        return stats

    def queued(self) -> dict[str, int]:
        """`queued` alone, by key, when `active` is not needed: a listener this process holds
        answers in microseconds (no scan of the connections); the others' queues come from a
        netlink dump of the LISTEN sockets alone, which never walks the connections either.
        Every listener of the host (`ListenerSet(None)`) takes a read()."""
        if self.everything:
            return {key: stats.queued for key, stats in self.read().items()}
        tcp, unix, queues = self._listeners()
        others = [address for address in tcp if address.key not in queues]
        if others:
            queues = {**queues, **_tcp_listener_queues(others, self._socket())}
        found = {address.key: queues[address.key] for address in tcp if address.key in queues}
        if unix:
            found.update({key: stats.queued for key, stats in unix_listener_stats(unix).items()})
        return found

    def _listeners(self) -> tuple[list[_TcpAddress], list[bytes], dict[str, int]]:
        """The TCP and unix listeners to read, and the queues of the TCP ones this process
        holds and that answer alone."""
        if not self.own and not self._tcp:
            return [], self._unix, {}  # no TCP address to look for among the descriptors
        held, queues = self._held.get(_HeldListeners).read(None if self.own else self._tcp)
        if self.own:
            return held.tcp, held.unix, queues
        return self._tcp, self._unix, queues

    def _socket(self) -> InetDiagSocket:
        return self._diag.get(InetDiagSocket)

    def reset(self) -> None:
        """Closes this process's socket after an error, in case it broke; a read opens another."""
        diag = self._diag.take()
        if diag is not None:
            diag.close()

    close = reset
