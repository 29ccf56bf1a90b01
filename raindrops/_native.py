"""The ctypes boundary: the only module that touches ctypes.

It loads libraindrops.so from beside this file, declares every signature, and
turns the library's status codes (0, -errno, or a validation code) into Python
exceptions. Counter updates go through a PyDLL handle: they take nanoseconds,
so releasing and re-taking the GIL around them would cost more than the work.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Callable

LIBRARY_PATH = Path(__file__).with_name("libraindrops.so")

# Validation codes from zig/status.zig.
_NOT_RAINDROPS = -4001
_LAYOUT_MISMATCH = -4002
_TRUNCATED = -4003
_CORRUPT = -4004
_VALIDATION_MESSAGES = {
    _NOT_RAINDROPS: "is not a raindrops segment",
    _LAYOUT_MISMATCH: "is a raindrops segment of another layout version",
    _TRUNCATED: "is truncated: the file is shorter than its header says",
    _CORRUPT: "has a corrupt header",
}

ArgumentError = ctypes.ArgumentError


class Segment(ctypes.Structure):
    """One process's view of a segment; mirrors `Segment` in zig/shm.zig."""

    _fields_ = [
        ("base", ctypes.c_void_p),
        ("bytes", ctypes.c_uint64),
        ("capacity", ctypes.c_uint64),
        ("counters_offset", ctypes.c_uint64),
        ("stride", ctypes.c_uint32),
        ("fd", ctypes.c_int32),
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


def _declare(handle: ctypes.CDLL, name: str, restype: object, argtypes: list[object] | None) -> Callable[..., object]:
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
    _lib, "named_open", _c.c_int32, [_c.c_char_p, _c.c_uint64, _c.c_uint32, _c.c_uint32, _SegmentPointer]
)
_named_unlink = _declare(_lib, "named_unlink", _c.c_int32, [_c.c_char_p])
_reserve = _declare(_lib, "reserve", _c.c_int32, [_SegmentPointer, _c.c_uint64])
_refresh = _declare(_lib, "refresh", _c.c_int32, [_SegmentPointer])
_size = _declare(_fast, "size", _c.c_uint64, [_SegmentPointer])
_set_size = _declare(_lib, "set_size", _c.c_int32, [_SegmentPointer, _c.c_uint64])
_snapshot = _declare(_lib, "snapshot", _c.c_int32, [_SegmentPointer, _c.POINTER(_c.c_uint64), _c.c_uint64])
_restore = _declare(_lib, "restore", _c.c_int32, [_SegmentPointer, _c.POINTER(_c.c_uint64), _c.c_uint64])
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
# Benchmark floors: a call that does nothing, through each handle.
noop = _declare(_lib, "noop", None, [])
noop_held = _declare(_fast, "noop", None, [])
noop_pointer = _declare(_fast, "noop_pointer", _c.c_uint64, None)

if _segment_bytes() != ctypes.sizeof(Segment):
    raise ImportError(f"raindrops: {LIBRARY_PATH} does not match this package (Segment layout differs)")

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
    _raise_for(_anonymous_create(size, ctypes.byref(segment)), f"anonymous segment of {size} counters")
    return segment


def named_open(name: str, size: int, mode: int, create: bool) -> Segment:
    segment = Segment()
    status = _named_open(_encode_name(name), size, mode, int(create), ctypes.byref(segment))
    if status == -errno.ENOENT:
        raise FileNotFoundError(errno.ENOENT, f"no raindrops segment named {name!r}", name)
    _raise_for(status, f"shared memory segment {name!r}")
    return segment


def named_unlink(name: str) -> None:
    status = _named_unlink(_encode_name(name))
    if status == -errno.ENOENT:
        raise FileNotFoundError(errno.ENOENT, f"no raindrops segment named {name!r}", name)
    _raise_for(status, f"shared memory segment {name!r}")


def reserve(segment: Segment, capacity: int) -> None:
    _raise_for(_reserve(ctypes.byref(segment), capacity), f"growing segment to {capacity} counters")


def refresh(segment: Segment) -> None:
    _raise_for(_refresh(ctypes.byref(segment)), "remapping segment")


def size(segment: Segment) -> int:
    return _size(ctypes.byref(segment))  # type: ignore[no-any-return]


def set_size(segment: Segment, size: int) -> None:
    _raise_for(_set_size(ctypes.byref(segment), size), f"resizing segment to {size} counters")


def snapshot(segment: Segment, count: int) -> list[int]:
    values = (ctypes.c_uint64 * count)()
    _raise_for(_snapshot(ctypes.byref(segment), values, count), "reading counters")
    return list(values)


def restore(segment: Segment, values: list[int]) -> None:
    array = (ctypes.c_uint64 * len(values))(*values)
    _raise_for(_restore(ctypes.byref(segment), array, len(values)), "writing counters")


def unmap(base: int, length: int) -> None:
    _raise_for(_unmap(base, length), "unmapping segment view")


def close(segment: Segment) -> None:
    _raise_for(_close(ctypes.byref(segment)), "closing segment")


def counter_pointer(segment: Segment, index: int) -> CounterPointer:
    """A pointer to counter `index` of the current view; the caller checks the index."""
    return ctypes.c_void_p(segment.base + segment.counters_offset + index * segment.stride)


def counter_pointers(segment: Segment, count: int) -> list[CounterPointer]:
    first = segment.base + segment.counters_offset
    stride = segment.stride
    return [ctypes.c_void_p(first + index * stride) for index in range(count)]
