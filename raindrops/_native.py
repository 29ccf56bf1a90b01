"""The ctypes boundary: the only module that touches ctypes.

It loads libraindrops.so from beside this file, declares every signature, and
turns the library's status codes (0, -errno, or a validation code) into Python
exceptions. Counter updates go through a PyDLL handle: they take nanoseconds,
so releasing and re-taking the GIL around them would cost more than the work.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

LIBRARY_PATH = Path(__file__).with_name("libraindrops.so")

# Validation codes from zig/status.zig, in the order raindrops_status_code()
# reports them; checked against the library at import.
_NOT_RAINDROPS = -4001
_LAYOUT_MISMATCH = -4002
_TRUNCATED = -4003
_CORRUPT = -4004
# Refusals of a file that another user could poison: PermissionError, see named_open().
_FOREIGN_OWNER = -4005
_WRITABLE_BY_OTHERS = -4006
_VALIDATION_CODES = (
    _NOT_RAINDROPS,
    _LAYOUT_MISMATCH,
    _TRUNCATED,
    _CORRUPT,
    _FOREIGN_OWNER,
    _WRITABLE_BY_OTHERS,
)
_VALIDATION_MESSAGES = {
    _NOT_RAINDROPS: "is not a raindrops segment",
    _LAYOUT_MISMATCH: "is a raindrops segment of another layout version",
    _TRUNCATED: "is truncated: the file is shorter than its header says",
    _CORRUPT: "has a corrupt header",
}

ArgumentError = ctypes.ArgumentError


class Segment(ctypes.Structure):
    """One process's view of a segment; mirrors `Segment` in zig/shm.zig.

    `owner_uid` and `mode` are the file's, as attaching found them (also when
    it refused the file for them)."""

    _fields_ = [
        ("base", ctypes.c_void_p),
        ("bytes", ctypes.c_uint64),
        ("capacity", ctypes.c_uint64),
        ("counters_offset", ctypes.c_uint64),
        ("stride", ctypes.c_uint32),
        ("fd", ctypes.c_int32),
        ("owner_uid", ctypes.c_uint32),
        ("mode", ctypes.c_uint32),
    ]


def _load() -> tuple[ctypes.CDLL, ctypes.PyDLL]:
    try:
        return ctypes.CDLL(str(LIBRARY_PATH)), ctypes.PyDLL(str(LIBRARY_PATH))
    except OSError as error:
        raise ImportError(
            f"raindrops: cannot load its native library {LIBRARY_PATH} ({error}); "
            "reinstall the package or run `make build`"
        ) from error


_lib, _fast = _load()


def _declare(
    handle: ctypes.CDLL, name: str, restype: object, argtypes: list[object] | None
) -> Callable[..., Any]:
    function = getattr(handle, "raindrops_" + name)
    function.restype = restype
    if argtypes is not None:
        function.argtypes = argtypes
    return function  # type: ignore[no-any-return]


_SegmentPointer = ctypes.POINTER(Segment)
_c = ctypes
_stride = _declare(_lib, "stride", _c.c_uint32, [])
_counters_max = _declare(_lib, "counters_max", _c.c_uint64, [])
_segment_bytes = _declare(_lib, "segment_bytes", _c.c_uint64, [])
_anonymous_create = _declare(_lib, "anonymous_create", _c.c_int32, [_c.c_uint64, _SegmentPointer])
_named_open = _declare(
    _lib,
    "named_open",
    _c.c_int32,
    [_c.c_char_p, _c.c_uint64, _c.c_uint32, _c.c_uint32, _SegmentPointer],
)
_named_unlink = _declare(_lib, "named_unlink", _c.c_int32, [_c.c_char_p])
_resize = _declare(_lib, "resize", _c.c_int32, [_SegmentPointer, _c.c_uint64, _c.c_uint32])
# Through the PyDLL handle: almost always one atomic load, which `len(rd)` pays.
_sync = _declare(_fast, "sync", _c.c_int64, [_SegmentPointer])
_snapshot = _declare(
    _lib, "snapshot", _c.c_int32, [_SegmentPointer, _c.POINTER(_c.c_uint64), _c.c_uint64]
)
_restore = _declare(
    _lib, "restore", _c.c_int32, [_SegmentPointer, _c.POINTER(_c.c_uint64), _c.c_uint64]
)
_unmap = _declare(_lib, "unmap", _c.c_int32, [_c.c_void_p, _c.c_uint64])
_close = _declare(_lib, "close", _c.c_int32, [_SegmentPointer])

# The hot path. Functions taking only a counter pointer leave argtypes unset:
# they are called with the prepared c_void_p objects from counter_pointers(),
# which ctypes passes without conversion (about 30 ns cheaper per call).
incr_one = _declare(_fast, "incr_one", _c.c_uint64, None)
decr_one = _declare(_fast, "decr_one", _c.c_uint64, None)
load = _declare(_fast, "load", _c.c_uint64, None)
incr = _declare(_fast, "incr", _c.c_uint64, [_c.c_void_p, _c.c_uint64])
decr = _declare(_fast, "decr", _c.c_uint64, [_c.c_void_p, _c.c_uint64])
store = _declare(_fast, "store", None, [_c.c_void_p, _c.c_uint64])
# The same three without argtypes, for 0 <= value <= SMALL_INT_MAX only: ctypes
# then passes a Python int as a C int sign-extended to 64 bits, which is exact
# in that range and about 100 ns cheaper than a c_uint64 conversion.
SMALL_INT_MAX = 2**31 - 1
incr_small = _fast["raindrops_incr"]
incr_small.restype = _c.c_uint64
decr_small = _fast["raindrops_decr"]
decr_small.restype = _c.c_uint64
store_small = _fast["raindrops_store"]
store_small.restype = None
# Benchmark floors: a call that does nothing, through each handle.
noop = _declare(_lib, "noop", None, [])
noop_held = _declare(_fast, "noop", None, [])
noop_pointer = _declare(_fast, "noop_pointer", _c.c_uint64, None)

# Argument-free updates (zig/counters.zig): a slot binds one prepared counter
# pointer to its own `u64 f(void)` increment and decrement, and a call without
# arguments costs about half of one that passes a pointer. PYFUNCTYPE holds the
# GIL, as the PyDLL handle does.
SLOTS_MAX: int = _declare(_lib, "slots_max", _c.c_uint32, [])()
_slot_claim = _declare(_fast, "slot_claim", _c.c_int64, [_c.c_void_p])
_slot_release = _declare(_fast, "slot_release", _c.c_int32, [_c.c_uint32])
_slot_step = _declare(_fast, "slot_step", _c.c_size_t, [_c.c_uint32, _c.c_uint32])
_SlotStep = ctypes.PYFUNCTYPE(_c.c_uint64)
Step = Callable[[], int]
# 1 where CPython's own aligned 8-byte read of a counter may replace load() (x86_64).
PLAIN_LOADS: bool = bool(_declare(_lib, "plain_loads", _c.c_uint32, [])())

if _segment_bytes() != ctypes.sizeof(Segment):
    raise ImportError(
        f"raindrops: {LIBRARY_PATH} does not match this package (Segment layout differs)"
    )

try:
    _status_code = _declare(_lib, "status_code", _c.c_int32, [_c.c_uint32])
except AttributeError as _error:  # a library older than this package
    raise ImportError(
        f"raindrops: {LIBRARY_PATH} does not match this package ({_error})"
    ) from _error
# One past its table the library answers 0, so a longer table is caught too.
for _index, _code in enumerate((*_VALIDATION_CODES, 0)):
    if _status_code(_index) != _code:
        raise ImportError(
            f"raindrops: {LIBRARY_PATH} does not match this package (status code {_index} is "
            f"{_code} here but {_status_code(_index)} in the library: zig/status.zig)"
        )


def mirrored(name: str, value: int) -> int:
    """`value`, a constant that a module copies from the library, once the library's
    raindrops_`name`() says the same: a difference means a library of another build, so the
    import fails, naming the constant."""
    try:
        found = _declare(_lib, name, _c.c_uint64, [])()
    except AttributeError as error:
        raise ImportError(
            f"raindrops: {LIBRARY_PATH} does not match this package ({error})"
        ) from error
    if found != value:
        raise ImportError(
            f"raindrops: {LIBRARY_PATH} does not match this package "
            f"(constant {name} is {value} here but {found} in the library)"
        )
    return value


STRIDE: int = _stride()
COUNTERS_MAX: int = _counters_max()
CounterPointer = ctypes.c_void_p


def _raise_for(status: int, subject: str) -> None:
    if status == 0:
        return
    message = _VALIDATION_MESSAGES.get(status)
    if message is not None:
        raise ValueError(f"{subject} {message}")
    code = -status
    if code in (errno.ENOMEM, errno.ENOSPC, errno.EFBIG):
        raise MemoryError(f"{subject}: {os.strerror(code)}")
    raise OSError(code, f"{subject}: {os.strerror(code)}")


def _encode_name(name: str) -> bytes:
    encoded = os.fsencode(name)
    if b"\0" in encoded:
        raise ValueError(f"invalid shared memory name {name!r}: it contains a NUL byte")
    return encoded


def anonymous_create(size: int) -> Segment:
    segment = Segment()
    _raise_for(
        _anonymous_create(size, ctypes.byref(segment)), f"anonymous segment of {size} counters"
    )
    return segment


def named_open(name: str, size: int, mode: int, create: bool) -> Segment:
    segment = Segment()
    status = _named_open(_encode_name(name), size, mode, int(create), ctypes.byref(segment))
    if status == -errno.ENOENT:
        raise FileNotFoundError(errno.ENOENT, f"no raindrops segment named {name!r}", name)
    if status == _FOREIGN_OWNER:
        why = f"its owner uid {segment.owner_uid} is not you (uid {os.geteuid()})"
    elif status == _WRITABLE_BY_OTHERS:
        why = f"its mode {segment.mode:#o} lets others write"
    else:
        _raise_for(status, f"shared memory segment {name!r}")
        return segment
    raise PermissionError(
        errno.EACCES, f"refusing shared memory segment {name!r}: {why}, so they could poison it"
    )


def named_unlink(name: str) -> None:
    status = _named_unlink(_encode_name(name))
    if status == -errno.ENOENT:
        raise FileNotFoundError(errno.ENOENT, f"no raindrops segment named {name!r}", name)
    _raise_for(status, f"shared memory segment {name!r}")


def resize(segment: Segment, size: int, grow_only: bool, subject: str) -> None:
    """Sets the shared size (only raises it with `grow_only`); may map a new view into `segment`."""
    status = _resize(ctypes.byref(segment), size, int(grow_only))
    if status == -errno.EAGAIN:
        raise BlockingIOError(
            errno.EAGAIN,
            f"{subject}: cannot resize to {size} counters, another process has held "
            "its lock for seconds",
        )
    _raise_for(status, subject)


def sync(segment: Segment, subject: str) -> int:
    """The shared size, never more than `segment` maps; may map a new view into `segment`."""
    size: int = _sync(ctypes.byref(segment))
    if size < 0:
        _raise_for(size, subject)
    return size


def snapshot(segment: Segment, count: int) -> list[int]:
    values = (ctypes.c_uint64 * count)()
    _raise_for(_snapshot(ctypes.byref(segment), values, count), "reading counters")
    return memoryview(values).cast("B").cast("Q").tolist()  # 25x list(values)


def restore(segment: Segment, values: list[int]) -> None:
    array = (ctypes.c_uint64 * len(values))(*values)
    _raise_for(_restore(ctypes.byref(segment), array, len(values)), "writing counters")


def unmap(base: int, length: int) -> None:
    _raise_for(_unmap(base, length), "unmapping segment view")


def close(segment: Segment) -> None:
    """Closes the segment's file; its views stay mapped until unmap()."""
    _raise_for(_close(ctypes.byref(segment)), "closing segment")


def counter_pointer(segment: Segment, index: int) -> CounterPointer:
    """A pointer to counter `index` of the current view; the caller checks the index."""
    return ctypes.c_void_p(segment.base + segment.counters_offset + index * segment.stride)


def counter_pointers(segment: Segment, first: int, count: int) -> list[CounterPointer]:
    """Pointers to counters first .. first + count - 1 of the current view; the caller checks."""
    start = segment.base + segment.counters_offset
    stride = segment.stride
    return [ctypes.c_void_p(start + index * stride) for index in range(first, first + count)]


def counter_words(segment: Segment, count: int) -> memoryview:
    """The first `count` counters of the current view as 'Q' items, one per stride (negative
    indexes count from `count`); CPython reads an item with one aligned 8-byte load. Valid
    while the view stays mapped; the caller checks `count`."""
    raw = (ctypes.c_char * (count * segment.stride)).from_address(
        segment.base + segment.counters_offset
    )
    return memoryview(raw).cast("B").cast("Q")[:: segment.stride // 8]


def slot_claim(pointer: CounterPointer) -> int | None:
    """A slot now bound to the counter at `pointer`, or None when every slot is claimed."""
    slot: int = _slot_claim(pointer)
    if slot == -errno.ENOSPC:
        return None
    if slot < 0:
        _raise_for(slot, "binding a counter to an update slot")
    return slot


def slot_steps(slot: int) -> tuple[Step, Step]:
    """The argument-free increment and decrement of a claimed slot."""
    return _SlotStep(_slot_step(slot, 0)), _SlotStep(_slot_step(slot, 1))


def pointer_steps(pointer: CounterPointer) -> tuple[Step, Step]:
    """Increment and decrement of the counter at `pointer` as argument-free callables, for when
    no slot is free: each call passes the pointer."""
    return functools.partial(incr_one, pointer), functools.partial(decr_one, pointer)


def slot_release(slot: int) -> None:
    """Frees a slot once nothing can call its steps any more (a later call updates no counter)."""
    _raise_for(_slot_release(slot), f"releasing update slot {slot}")


# ---------------------------------------------------------------------------
# Listener statistics (sock_diag netlink) and TCP_INFO. These calls do I/O, so
# they go through the CDLL handle, which releases the GIL around them.


class TcpQuery(ctypes.Structure):
    """One requested TCP address; mirrors `Query` in zig/inet_diag.zig."""

    _fields_ = [
        ("address", ctypes.c_uint8 * 16),
        ("family", ctypes.c_uint16),
        ("port", ctypes.c_uint16),
        ("wildcard", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8 * 3),
    ]


class TcpResult(ctypes.Structure):
    """One TCP listener's counts; mirrors `Result` in zig/inet_diag.zig."""

    _fields_ = [
        ("address", ctypes.c_uint8 * 16),
        ("family", ctypes.c_uint16),
        ("port", ctypes.c_uint16),
        ("listeners", ctypes.c_uint32),
        ("active", ctypes.c_uint64),
        ("queued", ctypes.c_uint64),
    ]


TCP_LISTEN = 1 << 10
TCP_ESTABLISHED = 1 << 1
TCP_STATES_ALL = TCP_LISTEN | TCP_ESTABLISHED
"""sock_diag state bits: LISTEN sockets, ESTABLISHED ones (zig/netlink.zig)."""


class TcpListener(ctypes.Structure):
    """A socket's listener facts; mirrors `Listener` in zig/tcp_info.zig.

    `listening` is 1 for a TCP socket in LISTEN, and the other fields are set only then;
    `queued`/`backlog` (TCP_INFO's tcpi_unacked/tcpi_sacked of a listener) only when
    `queue_known` is 1."""

    _fields_ = [
        ("address", ctypes.c_uint8 * 16),
        ("family", ctypes.c_uint16),
        ("port", ctypes.c_uint16),
        ("listening", ctypes.c_uint8),
        ("reuseport", ctypes.c_uint8),
        ("device_bound", ctypes.c_uint8),
        ("v6only", ctypes.c_uint8),
        ("queue_known", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8 * 3),
        ("queued", ctypes.c_uint32),
        ("backlog", ctypes.c_uint32),
    ]


UNIX_NAME_BYTES_MAX = 108


class UnixEntry(ctypes.Structure):
    """A requested or found unix listener name; mirrors `Entry` in zig/unix_diag.zig.

    `vfs_inode` and `vfs_device` name the socket file of a path (unix_diag's
    UNIX_DIAG_VFS: the inode's low 32 bits, the device as major << 20 | minor);
    0 and 0 for an abstract name."""

    _fields_ = [
        ("active", ctypes.c_uint64),
        ("queued", ctypes.c_uint64),
        ("listeners", ctypes.c_uint32),
        ("name_len", ctypes.c_uint32),
        ("name", ctypes.c_uint8 * UNIX_NAME_BYTES_MAX),
        ("vfs_inode", ctypes.c_uint32),
        ("vfs_device", ctypes.c_uint32),
        ("reserved", ctypes.c_uint8 * 4),
    ]


_u32p = _c.POINTER(_c.c_uint32)
_u64p = _c.POINTER(_c.c_uint64)
_diag_open = _declare(_lib, "diag_open", _c.c_int32, [])
_diag_close = _declare(_lib, "diag_close", _c.c_int32, [_c.c_int32])
_tcp_query_bytes = _declare(_lib, "tcp_query_bytes", _c.c_uint32, [])
_tcp_result_bytes = _declare(_lib, "tcp_result_bytes", _c.c_uint32, [])
_unix_entry_bytes = _declare(_lib, "unix_entry_bytes", _c.c_uint32, [])
_diag_queries_max = _declare(_lib, "diag_queries_max", _c.c_uint32, [])
_tcp_stats = _declare(
    _lib,
    "tcp_stats",
    _c.c_int32,
    [_c.c_int32, _c.POINTER(TcpQuery), _c.POINTER(TcpResult), _c.c_uint32, _c.c_uint32],
)
_tcp_states_all = _declare(_lib, "tcp_states_all", _c.c_uint32, [])
_tcp_all_listeners = _declare(
    _lib, "tcp_all_listeners", _c.c_int32, [_c.c_int32, _c.POINTER(TcpResult), _c.c_uint32, _u64p]
)
_unix_stats = _declare(
    _lib, "unix_stats", _c.c_int32, [_c.c_int32, _c.POINTER(UnixEntry), _c.c_uint32]
)
_unix_all_listeners = _declare(
    _lib, "unix_all_listeners", _c.c_int32, [_c.c_int32, _c.POINTER(UnixEntry), _c.c_uint32, _u64p]
)
_tcp_info_bytes = _declare(_lib, "tcp_info_bytes", _c.c_uint32, [])
_tcp_info = _declare(_lib, "tcp_info", _c.c_int32, [_c.c_int32, _c.c_char_p, _c.c_uint32, _u32p])
_tcp_listener_bytes = _declare(_lib, "tcp_listener_bytes", _c.c_uint32, [])
_tcp_listener = _declare(_lib, "tcp_listener", _c.c_int32, [_c.c_int32, _c.POINTER(TcpListener)])
_listening = _declare(
    _lib, "listening", _c.c_int32, [_c.POINTER(_c.c_int32), _c.POINTER(_c.c_uint8), _c.c_uint32]
)

if (_tcp_query_bytes(), _tcp_result_bytes(), _unix_entry_bytes(), _tcp_listener_bytes()) != (
    ctypes.sizeof(TcpQuery),
    ctypes.sizeof(TcpResult),
    ctypes.sizeof(UnixEntry),
    ctypes.sizeof(TcpListener),
) or _tcp_states_all() != TCP_STATES_ALL:
    raise ImportError(
        f"raindrops: {LIBRARY_PATH} does not match this package (sock_diag layouts differ)"
    )

DIAG_QUERIES_MAX: int = _diag_queries_max()
TCP_INFO_BYTES: int = _tcp_info_bytes()
_RETRIES_MAX = 8
_ALL_LISTENERS_CAPACITY = 64


def _raise_errno(status: int, subject: str) -> None:
    if status == 0:
        return
    code = -status
    if code == errno.ETIMEDOUT:
        raise TimeoutError(code, f"{subject}: the kernel did not answer in time")
    if code == errno.EBADMSG:
        raise OSError(code, f"{subject}: malformed netlink reply from the kernel")
    raise OSError(code, f"{subject}: {os.strerror(code)}")


def diag_open() -> int:
    """Opens a NETLINK_SOCK_DIAG socket and returns its fd."""
    fd: int = _diag_open()
    if fd < 0:
        _raise_errno(fd, "opening a NETLINK_SOCK_DIAG socket")
    return fd


def diag_close(fd: int) -> None:
    _raise_errno(_diag_close(fd), "closing a NETLINK_SOCK_DIAG socket")


def tcp_stats(fd: int, queries: list[TcpQuery], states: int = TCP_STATES_ALL) -> list[TcpResult]:
    """Counts for each query (in the same order), from the sockets in `states` (TCP_LISTEN,
    TCP_ESTABLISHED or both); chunked to the native bound."""
    results: list[TcpResult] = []
    for start in range(0, len(queries), DIAG_QUERIES_MAX):
        chunk = queries[start : start + DIAG_QUERIES_MAX]
        query_array = (TcpQuery * len(chunk))(*chunk)
        result_array = (TcpResult * len(chunk))()
        status = _tcp_stats(fd, query_array, result_array, len(chunk), states)
        _raise_errno(status, "inet_diag dump")
        results.extend(result_array)
    return results


def _all_listeners(
    function: Callable[..., int], entry_type: type, fd: int, subject: str
) -> list[object]:
    """Calls an all-listeners export, growing the array while it answers ENOBUFS."""
    capacity = _ALL_LISTENERS_CAPACITY
    count = ctypes.c_uint64(0)
    for _ in range(_RETRIES_MAX):
        array = (entry_type * capacity)()  # type: ignore[operator]
        status = function(fd, array, capacity, ctypes.byref(count))
        if status == -errno.ENOBUFS and count.value > capacity:
            # More listeners appeared than fit: retry with room to spare for newcomers.
            capacity = count.value + count.value // 4 + 16
            continue
        _raise_errno(status, subject)
        return list(array[: count.value])
    raise OSError(errno.ENOBUFS, f"{subject}: the number of listeners kept growing")


def tcp_all_listeners(fd: int) -> list[TcpResult]:
    return _all_listeners(_tcp_all_listeners, TcpResult, fd, "inet_diag dump")  # type: ignore[return-value]


def unix_stats(fd: int, entries: list[UnixEntry]) -> list[UnixEntry]:
    """Fills the counts of each requested name (in the same order)."""
    results: list[UnixEntry] = []
    for start in range(0, len(entries), DIAG_QUERIES_MAX):
        chunk = entries[start : start + DIAG_QUERIES_MAX]
        array = (UnixEntry * len(chunk))(*chunk)
        _raise_errno(_unix_stats(fd, array, len(chunk)), "unix_diag dump")
        results.extend(array)
    return results


def unix_all_listeners(fd: int) -> list[UnixEntry]:
    return _all_listeners(_unix_all_listeners, UnixEntry, fd, "unix_diag dump")  # type: ignore[return-value]


def tcp_info(fd: int) -> bytes:
    """The kernel's struct tcp_info for `fd`, as many bytes as the kernel wrote."""
    buffer = ctypes.create_string_buffer(TCP_INFO_BYTES)
    length = ctypes.c_uint32(0)
    status = _tcp_info(fd, buffer, TCP_INFO_BYTES, ctypes.byref(length))
    if status != 0:
        code = -status
        if code in (errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.ENOTSOCK):
            raise OSError(
                code,
                f"fd {fd} is not a TCP socket: getsockopt(TCP_INFO) failed: {os.strerror(code)}",
            )
        _raise_errno(status, f"getsockopt(TCP_INFO) on fd {fd}")
    return buffer.raw[: length.value]


def tcp_listener(fd: int) -> TcpListener:
    """What `fd` listens on and its accept queue (one native call: TCP_INFO, getsockname and
    the options that let another socket share the address); `listening` 0 when it is not a TCP
    listener. OSError when `fd` is not an open socket."""
    listener = TcpListener()
    _raise_errno(_tcp_listener(fd, ctypes.byref(listener)), f"reading listener fd {fd}")
    return listener


DESCRIPTORS_MAX = 65536


def listening(fds: list[int]) -> list[int]:
    """Those of `fds` (at most DESCRIPTORS_MAX) that are listening sockets, in order: one
    getsockopt(SO_ACCEPTCONN) each, natively, so no descriptor is wrapped in a Python socket."""
    if not fds:
        return []
    numbers = (ctypes.c_int32 * len(fds))(*fds)
    marks = (ctypes.c_uint8 * len(fds))()
    _raise_errno(_listening(numbers, marks, len(fds)), "checking descriptors")
    return [fd for fd, mark in zip(fds, marks, strict=True) if mark]


# ---------------------------------------------------------------------------
# Shared histograms and the middleware's request accounting (zig/histogram.zig,
# zig/scoreboard.zig). Descriptors are built once per process; their pointers
# target a segment view that stays mapped while its Raindrops object lives.


class Histogram(ctypes.Structure):
    """Where a shared histogram's counters are; mirrors zig/histogram.zig."""

    _fields_ = [
        ("first", ctypes.c_void_p),
        ("stride", ctypes.c_uint64),
        ("buckets", ctypes.c_uint64),
    ]


class Board(ctypes.Structure):
    """One process's view of the middleware's counters; mirrors zig/scoreboard.zig."""

    _fields_ = [
        ("calling", ctypes.c_void_p),
        ("writing", ctypes.c_void_p),
        ("errors", ctypes.c_void_p),
        ("exceptions", ctypes.c_void_p),
        ("busy_us", ctypes.c_void_p),
        ("numbered", ctypes.c_void_p),
        ("numbered_count", ctypes.c_uint64),
    ]


class Series(ctypes.Structure):
    """One (method, status code) of the middleware's shared table; mirrors zig/scoreboard.zig."""

    _fields_ = [
        ("requests", ctypes.c_void_p),
        ("errors", ctypes.c_void_p),
        ("sum_us", ctypes.c_void_p),
        ("first_bucket", ctypes.c_void_p),
        ("stride", ctypes.c_uint64),
        ("bounds_us", ctypes.c_void_p),
        ("bounds", ctypes.c_uint64),
    ]


_board_bytes = _declare(_lib, "board_bytes", _c.c_uint32, [])
_series_bytes = _declare(_lib, "series_bytes", _c.c_uint32, [])
_histogram_bytes = _declare(_lib, "histogram_bytes", _c.c_uint32, [])
if (_board_bytes(), _series_bytes(), _histogram_bytes()) != (
    ctypes.sizeof(Board),
    ctypes.sizeof(Series),
    ctypes.sizeof(Histogram),
):
    raise ImportError(
        f"raindrops: {LIBRARY_PATH} does not match this package (Board layout differs)"
    )

compare_swap = _declare(_fast, "compare_swap", _c.c_uint64, [_c.c_void_p, _c.c_uint64, _c.c_uint64])
_histogram_observe = _declare(_fast, "histogram_observe", _c.c_int32, [_c.c_void_p, _c.c_uint64])
_board_valid = _declare(_fast, "board_valid", _c.c_uint32, [_c.POINTER(Board)])
_series_valid = _declare(_fast, "series_valid", _c.c_uint32, [_c.POINTER(Series)])
# Called with prepared pointers to a validated Board and Series: see descriptor_pointer().
board_enter = _declare(_fast, "board_enter", None, None)
board_respond = _declare(_fast, "board_respond", None, None)
board_respond_counted = _declare(_fast, "board_respond_counted", None, None)
_DURATION_ARGUMENTS: list[object] = [_c.c_void_p, _c.c_void_p, _c.c_uint64]
board_leave_long = _declare(_fast, "board_leave", None, _DURATION_ARGUMENTS)
board_leave_counting_long = _declare(_fast, "board_leave_counting", None, _DURATION_ARGUMENTS)
board_fail_long = _declare(_fast, "board_fail", None, _DURATION_ARGUMENTS)


def _without_argtypes(name: str) -> Any:
    """The same function for durations up to SMALL_INT_MAX (see incr_small)."""
    function = _fast[f"raindrops_{name}"]
    function.restype = None
    return function


board_leave = _without_argtypes("board_leave")
board_leave_counting = _without_argtypes("board_leave_counting")
board_fail = _without_argtypes("board_fail")


# The WSGI middleware's requests in flight (zig/requests.zig), each in a slot of this
# process's table: enter answers the request's token (NO_SLOT when every slot is taken), the
# other steps take it. Tokens are passed as Python ints and descriptors as prepared pointers,
# without argtypes; None passes a null series.
REQUESTS_MAX: int = _declare(_lib, "requests_max", _c.c_uint32, [])()
TOKENS_MAX: int = _declare(_lib, "request_tokens_max", _c.c_uint32, [])()
BOARDS_MAX: int = _declare(_lib, "request_boards_max", _c.c_uint32, [])()
NO_SLOT = TOKENS_MAX
SERIES_NUMBER_SHIFT = TOKENS_MAX.bit_length() - 1
"""request_respond_numbered(token | (number + 1) << SERIES_NUMBER_SHIFT)."""
request_enter = _declare(_fast, "request_enter", _c.c_int32, None)
request_respond = _declare(_fast, "request_respond", None, None)
request_respond_numbered = _declare(_fast, "request_respond_numbered", None, None)
request_leave = _declare(_fast, "request_leave", None, None)
request_fail = _declare(_fast, "request_fail", None, None)
requests_reset = _declare(_fast, "requests_reset", None, [])
_request_enter_step = _declare(_fast, "request_enter_step", _c.c_size_t, None)
_request_leave_step = _declare(_lib, "request_leave_step", _c.c_size_t, [_c.c_uint32])
_EnterStep = ctypes.PYFUNCTYPE(_c.c_int32)
_LeaveStep = ctypes.PYFUNCTYPE(None)
clock_ns = _declare(_fast, "clock_ns", _c.c_uint64, [])
"""CLOCK_MONOTONIC in ns: the clock of the slots' durations."""
_clock_vdso = _declare(_lib, "clock_vdso", _c.c_uint32, [])


def clock_vdso() -> bool:
    """Whether that clock is read without a system call (through the kernel's vDSO)."""
    return bool(_clock_vdso())


def request_enter_step(board: CounterPointer) -> Callable[[], int]:
    """request_enter(board) as a call without arguments (a board slot's own function), or with
    the argument when every board slot holds another board. The caller keeps the board alive
    while it uses the step."""
    address = _request_enter_step(board)
    if address == 0:
        return functools.partial(request_enter, board)
    return _EnterStep(address)


@functools.cache
def request_leave_steps() -> tuple[Callable[[], None], ...]:
    """Each token's argument-free leave(), by token: what the middleware gives the server as a
    body's close()."""
    return tuple(_LeaveStep(_request_leave_step(token)) for token in range(TOKENS_MAX))


SeriesArray = ctypes.Array[Series]


def series_array(count: int) -> SeriesArray:
    """`count` empty Series descriptors in one C array, numbered by index (a Board's
    `numbered`); an entry is prepared by storing a Series in it."""
    return (Series * count)()


def series_at(array: SeriesArray, number: int) -> CounterPointer:
    """A prepared pointer to entry `number` of `array` once it holds a valid Series."""
    return descriptor_pointer(array[number])


U64Array = ctypes.Array[ctypes.c_uint64]
F64Array = ctypes.Array[ctypes.c_double]


def u64_array(values: Sequence[int]) -> U64Array:
    """`values` (0 .. 2**64 - 1) as a C array for a descriptor to point at (a Series' bounds);
    the caller keeps it alive as long as the descriptor."""
    return (ctypes.c_uint64 * len(values))(*values)


def f64_array(values: Sequence[float]) -> F64Array:
    """`values` as a C array of doubles for a descriptor to point at (a Buckets' bounds); the
    caller keeps it alive as long as the descriptor."""
    return (ctypes.c_double * len(values))(*values)


def address_of(array: U64Array | F64Array | SeriesArray) -> int:
    """Where an array made by u64_array(), f64_array() or series_array() is, for a
    descriptor's field."""
    return ctypes.addressof(array)


def histogram_observe(histogram_pointer: CounterPointer, value: int) -> None:
    _raise_for(_histogram_observe(histogram_pointer, value), "histogram descriptor")


def descriptor_pointer(descriptor: ctypes.Structure) -> CounterPointer:
    """A prepared pointer to a Histogram, Board or Series; the caller keeps `descriptor` alive."""
    if isinstance(descriptor, Board) and not _board_valid(ctypes.byref(descriptor)):
        raise ValueError("incomplete middleware board")
    if isinstance(descriptor, Series) and not _series_valid(ctypes.byref(descriptor)):
        raise ValueError("incomplete middleware series (bounds must ascend, 1 to 32 of them)")
    return ctypes.c_void_p(ctypes.addressof(descriptor))


# ---------------------------------------------------------------------------
# raindrops.metrics (zig/float.zig): f64 value words and histograms with explicit
# upper bounds. As on the counters' hot path, the calls taking only a prepared
# pointer leave argtypes unset; the others convert their float argument.


class Buckets(ctypes.Structure):
    """Where one label set of a metrics Histogram lives; mirrors `Buckets` in zig/float.zig."""

    _fields_ = [
        ("first", ctypes.c_void_p),
        ("stride", ctypes.c_uint64),
        ("buckets", ctypes.c_uint64),
        ("bounds", ctypes.c_void_p),
        ("sum", ctypes.c_void_p),
    ]


_buckets_bytes = _declare(_lib, "buckets_bytes", _c.c_uint32, [])
if _buckets_bytes() != ctypes.sizeof(Buckets):
    raise ImportError(
        f"raindrops: {LIBRARY_PATH} does not match this package (Buckets layout differs)"
    )
BUCKETS_MAX: int = _declare(_lib, "buckets_max", _c.c_uint64, [])()
_buckets_valid = _declare(_fast, "buckets_valid", _c.c_uint32, [_c.POINTER(Buckets)])
_FLOAT_ARGUMENTS: list[object] = [_c.c_void_p, _c.c_double]
float_add_one = _declare(_fast, "float_add_one", None, None)
float_sub_one = _declare(_fast, "float_sub_one", None, None)
float_add = _declare(_fast, "float_add", None, _FLOAT_ARGUMENTS)
float_store = _declare(_fast, "float_store", None, _FLOAT_ARGUMENTS)
float_load = _declare(_fast, "float_load", _c.c_double, [_c.c_void_p])
float_fold_max = _declare(_fast, "float_fold_max", None, _FLOAT_ARGUMENTS)
float_fold_min = _declare(_fast, "float_fold_min", None, _FLOAT_ARGUMENTS)
float_ordered_key = _declare(_fast, "float_ordered_key", _c.c_uint64, [_c.c_double])
# Called with a prepared pointer to a validated Buckets: see buckets_pointer().
buckets_observe = _declare(_fast, "buckets_observe", None, _FLOAT_ARGUMENTS)


def buckets_pointer(descriptor: Buckets) -> CounterPointer:
    """A prepared pointer to a validated Buckets; the caller keeps `descriptor` (and the bounds
    and counters it points to) alive."""
    if not _buckets_valid(ctypes.byref(descriptor)):
        raise ValueError(
            f"invalid histogram buckets: 2 to {BUCKETS_MAX} buckets, finite ascending bounds"
        )
    return ctypes.c_void_p(ctypes.addressof(descriptor))
