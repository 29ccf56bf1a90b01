"""`TCPInfo`: one snapshot of Linux's struct tcp_info for a TCP socket.

The native library copies the struct as bytes (getsockopt(TCP_INFO)); the
fields are decoded here from a table of the kernel 6.18 layout (280 bytes).
The kernel copies min(its struct size, our buffer), so an older kernel writes
fewer bytes: fields past what it wrote read as None rather than as a made-up
zero. Units follow tcp(7): rto, ato, rtt, rttvar, rcv_rtt, min_rtt in
microseconds; last_data_sent, last_data_recv, last_ack_recv in milliseconds
ago. For a LISTEN socket, Linux (since 2.6.24) puts the accept-queue length
in `unacked` and the backlog in `sacked`: the numbers inet_diag reports as
idiag_rqueue and idiag_wqueue, and ss(8) as Recv-Q and Send-Q.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Mapping
from typing import Any

from raindrops import _native

__all__ = ["TCPInfo", "TCP_STATES", "FIELDS"]

TCP_STATES: Mapping[str, int] = {
    "ESTABLISHED": 1,
    "SYN_SENT": 2,
    "SYN_RECV": 3,
    "FIN_WAIT1": 4,
    "FIN_WAIT2": 5,
    "TIME_WAIT": 6,
    "CLOSE": 7,
    "CLOSE_WAIT": 8,
    "LAST_ACK": 9,
    "LISTEN": 10,
    "CLOSING": 11,
}
"""Linux TCP state numbers (TCPInfo.state); Ruby raindrops lacks this on Linux."""
_STATE_NAMES = {number: name for name, number in TCP_STATES.items()}

# struct tcp_info in kernel order, without the tcpi_ prefix. "B"/"H"/"I"/"Q":
# u8/u16/u32/u64, naturally aligned. A "(name, bits)" group is a bit-field
# packed from the low bits of the preceding storage unit.
_LAYOUT: tuple[tuple[str, str], ...] = (
    ("state", "B"),
    ("ca_state", "B"),
    ("retransmits", "B"),
    ("probes", "B"),
    ("backoff", "B"),
    ("options", "B"),
    ("_wscale", "B"),
    ("_flags", "B"),
    *(
        (name, "I")
        for name in (
            "rto",
            "ato",
            "snd_mss",
            "rcv_mss",
            "unacked",
            "sacked",
            "lost",
            "retrans",
            "fackets",
            "last_data_sent",
            "last_ack_sent",
            "last_data_recv",
            "last_ack_recv",
            "pmtu",
            "rcv_ssthresh",
            "rtt",
            "rttvar",
            "snd_ssthresh",
            "snd_cwnd",
            "advmss",
            "reordering",
            "rcv_rtt",
            "rcv_space",
            "total_retrans",
        )
    ),
    ("pacing_rate", "Q"),
    ("max_pacing_rate", "Q"),
    ("bytes_acked", "Q"),
    ("bytes_received", "Q"),
    ("segs_out", "I"),
    ("segs_in", "I"),
    ("notsent_bytes", "I"),
    ("min_rtt", "I"),
    ("data_segs_in", "I"),
    ("data_segs_out", "I"),
    ("delivery_rate", "Q"),
    ("busy_time", "Q"),
    ("rwnd_limited", "Q"),
    ("sndbuf_limited", "Q"),
    ("delivered", "I"),
    ("delivered_ce", "I"),
    ("bytes_sent", "Q"),
    ("bytes_retrans", "Q"),
    ("dsack_dups", "I"),
    ("reord_seen", "I"),
    ("rcv_ooopack", "I"),
    ("snd_wnd", "I"),
    ("rcv_wnd", "I"),
    ("rehash", "I"),
    ("total_rto", "H"),
    ("total_rto_recoveries", "H"),
    ("total_rto_time", "I"),
    ("received_ce", "I"),
    ("delivered_e1_bytes", "I"),
    ("delivered_e0_bytes", "I"),
    ("delivered_ce_bytes", "I"),
    ("received_e1_bytes", "I"),
    ("received_e0_bytes", "I"),
    ("received_ce_bytes", "I"),
    ("_ecn", "I"),
)

# Bit-fields: (name, storage unit, lowest bit, width).
_BITFIELDS: tuple[tuple[str, str, int, int], ...] = (
    ("snd_wscale", "_wscale", 0, 4),
    ("rcv_wscale", "_wscale", 4, 4),
    ("delivery_rate_app_limited", "_flags", 0, 1),
    ("fastopen_client_fail", "_flags", 1, 2),
    ("ecn_mode", "_ecn", 0, 2),
    ("accecn_opt_seen", "_ecn", 2, 2),
    ("accecn_fail_mode", "_ecn", 4, 4),
    ("options2", "_ecn", 8, 24),
)


def _offsets() -> dict[str, tuple[int, struct.Struct]]:
    table: dict[str, tuple[int, struct.Struct]] = {}
    offset = 0
    for name, code in _LAYOUT:
        unit = struct.Struct("=" + code)
        offset = (offset + unit.size - 1) // unit.size * unit.size
        table[name] = (offset, unit)
        offset += unit.size
    assert offset == 280, offset  # kernel 6.18's sizeof(struct tcp_info)
    return table


_UNITS = _offsets()
FIELDS: tuple[str, ...] = tuple(
    [name for name, _ in _LAYOUT if not name.startswith("_")] + [name for name, *_ in _BITFIELDS]
)
"""Every attribute of TCPInfo, in no particular order beyond: plain fields, then bit-fields."""


_FD_MAX = 2**31 - 1
"""The largest descriptor a C int holds: ctypes would silently truncate a larger one to 32 bits
and read some other socket (2**32 + fd reads fd)."""


def _checked_fd(fd: int, origin: str) -> int:
    """Refuses, naming it, what the C int of the native call cannot carry unchanged."""
    if isinstance(fd, bool):
        raise ValueError(f"invalid file descriptor {fd!r}{origin}: a bool is not a descriptor")
    number = operator.index(fd)
    if not 0 <= number <= _FD_MAX:
        why = "is the socket closed?" if number == -1 else f"outside 0..{_FD_MAX}"
        raise ValueError(f"invalid file descriptor {number}{origin} ({why})")
    return number


def _fileno(sock_or_fd: object) -> int:
    if isinstance(sock_or_fd, int):
        return _checked_fd(sock_or_fd, "")
    fileno = getattr(sock_or_fd, "fileno", None)
    if fileno is None:
        raise TypeError(
            f"TCPInfo needs a socket or a file descriptor, not {type(sock_or_fd).__name__}"
        )
    fd = fileno()
    if not isinstance(fd, int):
        raise TypeError(
            f"fileno() of {type(sock_or_fd).__name__} returned {type(fd).__name__}, not int"
        )
    return _checked_fd(fd, f" from fileno() of {type(sock_or_fd).__name__}")


class TCPInfo:
    """A snapshot of getsockopt(TCP_INFO), read once at construction.

    Every field of struct tcp_info is an attribute named without "tcpi_"
    (state, rtt, last_data_recv, snd_cwnd, bytes_acked, ...). A field the
    running kernel did not fill in is None. Raises OSError for a socket that
    is not TCP, TypeError for an object that is neither a socket nor an int,
    ValueError for a descriptor outside 0..2**31-1 (or a bool).
    """

    __slots__ = ("_values", "length")

    def __init__(self, sock_or_fd: Any) -> None:
        raw = _native.tcp_info(_fileno(sock_or_fd))
        self.length: int = len(raw)
        """Bytes of struct tcp_info the kernel wrote."""
        values: dict[str, int | None] = {}
        for name, (offset, unit) in _UNITS.items():
            values[name] = (
                unit.unpack_from(raw, offset)[0] if offset + unit.size <= len(raw) else None
            )
        for name, storage, low_bit, width in _BITFIELDS:
            word = values[storage]
            values[name] = None if word is None else (word >> low_bit) & ((1 << width) - 1)
        self._values = values

    def __getattr__(self, name: str) -> int | None:
        values = object.__getattribute__(self, "_values")
        if name in values and not name.startswith("_"):
            return values[name]  # type: ignore[no-any-return]
        raise AttributeError(f"'TCPInfo' object has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(FIELDS))

    @property
    def state_name(self) -> str:
        """The TCP state as a name from TCP_STATES ("ESTABLISHED", "LISTEN", ...)."""
        return _STATE_NAMES.get(self._values["state"] or 0, "UNKNOWN")

    def to_dict(self) -> dict[str, int | None]:
        return {name: self._values[name] for name in FIELDS}

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={self._values[name]}" for name in ("state", "rtt", "rttvar", "snd_cwnd")
        )
        return f"<raindrops.TCPInfo {self.state_name} {shown} ...>"
