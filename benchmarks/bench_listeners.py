"""Listener statistics benchmark: what one poll of a listener's counts costs.

A monitor asks "how many connections has this listener accepted and still
open (active), and how many wait in its accept queue (queued)?" many times a
minute, so the cost of one answer matters, and it grows with the number of
sockets on the host, which the kernel walks for every answer. Scenarios, each
with its own listeners on 127.0.0.1 (a main one and 3 idle ones): 0, 1,000 and
10,000 accepted connections on the main listener, and a full accept queue (a
listen(128) listener holding 129 connections nobody accepts, the most the
kernel queues). The client sockets live in a forked child process and the
accepted ones in this one, so that neither needs more than 10,000 files.

Per scenario, the time of one call (best of REPEATS timeit runs after
timeit's autorange, as in bench_counters.py but fewer, to keep the whole
script near 2 minutes; the methods take turns run by run, so that a burst of
load elsewhere on a shared machine falls on all of them alike) of each way to
get the main listener's counts:
 - raindrops (this project): one address, the 4 listeners' addresses, and
   every listener of the host, reusing one InetDiagSocket;
 - raindrops reading a listener this process holds, as the middleware and the
   Watcher do (a ListenerSet of its address): `queued` alone, asked of the
   socket (getsockopt TCP_INFO), and both counts (`active` from a dump of the
   ESTABLISHED sockets on its port); and `queued` of a listener it does not
   hold, from a dump of the LISTEN sockets alone;
 - Ruby raindrops, the same three queries, timed inside Ruby (one `ruby`
   process per scenario, so its start-up is not counted);
 - Ruby raindrops' netlink requests replayed from Python (the same request,
   filter program and 4 KiB receive buffer; replies drained, not counted): the
   kernel's share of Ruby's cost, a stand-in when ruby-raindrops is missing;
 - pyroute2's DiagSocket: a dump of the port (the kernel filters on
   idiag_sport), and a full dump attributed to every listener, counted in Python;
 - parsing /proc/net/tcp and /proc/net/tcp6 in Python;
 - psutil.net_connections("tcp") and counting (psutil has no accept queue);
 - ss(8) run twice through subprocess (its accepted connections and its
   listener), so the time includes two process spawns.
The host's TCP socket count is printed beside the figures since it moves
them, and so is the cost of the scan of this process's descriptors that a
ListenerSet makes at most every HELD_RESCAN_S seconds to find the listeners
it holds (this process holds every accepted connection). Every method's
counts are checked against the expected ones and any disagreement is
printed; the exit status is 1 when this project's disagree, else 0. Another
method's disagreement is that method's (/proc/net/tcp, read in many read()
calls, is no snapshot: sockets that other processes open or close meanwhile
shift it, so it can count a line twice or skip one), and missed targets are
reported, not fatal. Ruby's goals are also judged against the replay of its
requests, marked "(proxy)": the replay is faster than Ruby (it counts
nothing), so a ratio to it within the goal means a pass, and one above it
is "unknown" (Ruby's all-listeners counting, a string key and a hash
lookup per socket, is most of its cost there).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import NamedTuple

import psutil  # type: ignore[import-untyped]
from _bench import ruby_raindrops_installed, table
from pyroute2 import DiagSocket  # type: ignore[import-untyped]
from pyroute2.netlink.diag import SS_ESTABLISHED, SS_LISTEN  # type: ignore[import-untyped]

from raindrops import linux
from raindrops.linux import InetDiagSocket, ListenerSet, ListenStats, tcp_listener_stats

REPEATS = 3
HOST = "127.0.0.1"
IDLE_LISTENERS = 3
MAIN_BACKLOG = 4096
FULL_QUEUE_BACKLOG = 128
SETUP_SECONDS_MAX = 60.0
ACCEPT_POLL_SECONDS = 0.5

ONE_VS_RUBY_MAX = 0.92
PSUTIL_VS_ONE_MIN = 50.0
ALL_VS_RUBY_MAX = 0.5
OWN_QUEUED_US_MAX = 50.0

_FORK = multiprocessing.get_context("fork")
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 s: close() sends a RST, so no TIME_WAIT socket outlives its scenario."""
_LOOPBACK_SOURCES = frozenset({HOST, f"::ffff:{HOST}"})
_WILDCARDS = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}
_LISTEN_OR_ESTABLISHED = (1 << SS_LISTEN) | (1 << SS_ESTABLISHED)
_PROC_NET_TCP = ("/proc/net/tcp", "/proc/net/tcp6")
_PROC_LISTEN = b"0A"
_PROC_ESTABLISHED = b"01"
_EHASH_ENTRIES = "/proc/sys/net/ipv4/tcp_ehash_entries"
_SS_INODE = re.compile(r"\bino:(\d+)")


class Counts(NamedTuple):
    """The main listener's counts as one method sees them; None where it does not tell."""

    active: int | None
    queued: int | None

    def __str__(self) -> str:
        return "/".join("-" if count is None else str(count) for count in self)

    def agrees(self, expected: Counts) -> bool:
        return self.active in (None, expected.active) and self.queued in (None, expected.queued)


UNCOUNTED = Counts(None, None)


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int
    backlog: int
    accept: bool
    """Whether this process accepts the clients (else they stay in the accept queue)."""

    @property
    def expected(self) -> Counts:
        return Counts(self.clients, 0) if self.accept else Counts(0, self.clients)


SCENARIOS = (
    Scenario("0", 0, MAIN_BACKLOG, True),
    Scenario("1,000", 1_000, MAIN_BACKLOG, True),
    Scenario("10,000", 10_000, MAIN_BACKLOG, True),
    # The kernel queues until the queue holds more than the backlog: backlog + 1.
    Scenario("full queue", FULL_QUEUE_BACKLOG + 1, FULL_QUEUE_BACKLOG, False),
)
TARGET_SCENARIO = "10,000"

RAINDROPS_ONE = "raindrops (this project), 1 address"
RAINDROPS_FOUR = f"raindrops (this project), {IDLE_LISTENERS + 1} addresses"
RAINDROPS_ALL = "raindrops (this project), all listeners"
OWN_QUEUED = "raindrops, held listener's queued (TCP_INFO)"
OWN_READ = "raindrops, held listener (TCP_INFO + ESTABLISHED dump)"
LISTEN_DUMP = "raindrops, queued of a listener not held (LISTEN dump)"
RUBY_ONE = "Ruby raindrops, 1 address"
RUBY_FOUR = f"Ruby raindrops, {IDLE_LISTENERS + 1} addresses"
RUBY_ALL = "Ruby raindrops, all listeners"
REPLAY_ONE = "Ruby raindrops' request replayed, 1 address"
REPLAY_ALL = "Ruby raindrops' request replayed, all listeners"
PSUTIL = 'psutil.net_connections("tcp") + count'


@dataclass
class Measured:
    """One scenario's results: µs per call and counts of each method, by row label."""

    host_sockets: int
    micros: dict[str, float]
    counts: dict[str, Counts]
    descriptors: int
    scan_ms: float
    """One scan of this process's descriptors for the listeners it holds."""


# ---------------------------------------------------------------------------
# Connections.


def _raise_file_limit() -> None:
    """Soft RLIMIT_NOFILE to the hard limit: 10,000 sockets are over the usual 1,024."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    sock.close()


def _hold_clients(port: int, count: int, pipe: Connection) -> None:
    """Runs in the child: connects `count` clients, reports (None or the error), holds them
    until told to stop."""
    clients: list[socket.socket] = []
    try:
        for _ in range(count):
            clients.append(socket.create_connection((HOST, port)))
        pipe.send(None)
    except OSError as error:
        pipe.send(f"connecting client {len(clients) + 1} of {count}: {error}")
    try:
        pipe.recv()
    finally:
        for client in clients:
            _reset(client)


class Clients:
    """The child process holding the client sockets, seen from the benchmark process."""

    def __init__(self, process: multiprocessing.process.BaseProcess, pipe: Connection) -> None:
        self._process = process
        self._pipe = pipe
        self._connected = False

    def connected(self) -> bool:
        """True once every client is connected; raises if the child failed or died."""
        if not self._connected and self._pipe.poll():
            error = self._pipe.recv()
            if error is not None:
                raise RuntimeError(f"client process: {error}")
            self._connected = True
        if not self._connected and not self._process.is_alive():
            raise RuntimeError(f"client process exited early (code {self._process.exitcode})")
        return self._connected


@contextmanager
def _clients(port: int, count: int) -> Iterator[Clients]:
    """A forked child connecting `count` clients to HOST:port; stopped (its sockets reset) on
    exit."""
    pipe, child_pipe = _FORK.Pipe()
    process = _FORK.Process(target=_hold_clients, args=(port, count, child_pipe), daemon=True)
    process.start()
    try:
        yield Clients(process, pipe)
    finally:
        with suppress(OSError):
            pipe.send("stop")
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join()
        pipe.close()
        child_pipe.close()


def _listener(stack: ExitStack, backlog: int) -> socket.socket:
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.bind((HOST, 0))
    sock.listen(backlog)
    return sock


def _accept(
    stack: ExitStack, listener: socket.socket, count: int, clients: Clients, deadline: float
) -> None:
    """Accepts `count` connections, each reset on exit, while the child connects them."""
    listener.settimeout(ACCEPT_POLL_SECONDS)
    accepted = 0
    while accepted < count:
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            clients.connected()  # raises if the child failed
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"accepted {accepted} of {count} connections in {SETUP_SECONDS_MAX:g} s"
                ) from None
            continue
        stack.callback(_reset, sock)
        accepted += 1


def _wait(condition: Callable[[], bool], deadline: float, what: str) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done in {SETUP_SECONDS_MAX:g} s")
        time.sleep(0.01)


@contextmanager
def _scenario(scenario: Scenario) -> Iterator[list[int]]:
    """The listeners' ports (main first) with the scenario's connections; all closed on exit,
    also on error."""
    with ExitStack() as stack:
        listeners = [_listener(stack, scenario.backlog)]
        listeners += [_listener(stack, FULL_QUEUE_BACKLOG) for _ in range(IDLE_LISTENERS)]
        ports: list[int] = [listener.getsockname()[1] for listener in listeners]
        clients = stack.enter_context(_clients(ports[0], scenario.clients))
        deadline = time.monotonic() + SETUP_SECONDS_MAX
        if scenario.accept:
            _accept(stack, listeners[0], scenario.clients, clients, deadline)
        _wait(clients.connected, deadline, "connecting the clients")
        if not scenario.accept:
            # connect() returns before the kernel moves the connection to the accept queue.
            _wait(
                lambda: _proc_net_tcp(ports[0]).queued == scenario.clients,
                deadline,
                "filling the accept queue",
            )
        yield ports


def _host_sockets() -> int:
    """TCP sockets of the host (this network namespace): the lines of /proc/net/tcp and tcp6
    but their headers."""
    total = 0
    for path in _PROC_NET_TCP:
        with open(path, "rb") as proc:
            total += sum(1 for _ in proc) - 1
    return total


# ---------------------------------------------------------------------------
# The methods: each returns the main listener's counts, the way a user of that tool would get them.

Method = Callable[[], Counts]


def _raindrops_methods(ports: list[int], sock: InetDiagSocket) -> dict[str, Method]:
    main = f"{HOST}:{ports[0]}"
    one = [main]
    every = [f"{HOST}:{port}" for port in ports]
    held = ListenerSet(one)  # one per scenario, as a middleware keeps one
    address = linux._parse_tcp_address(main)

    def main_counts(stats: dict[str, ListenStats]) -> Counts:
        return Counts(stats[main].active, stats[main].queued)

    return {
        RAINDROPS_ONE: lambda: main_counts(tcp_listener_stats(one, sock)),
        RAINDROPS_FOUR: lambda: main_counts(tcp_listener_stats(every, sock)),
        RAINDROPS_ALL: lambda: main_counts(tcp_listener_stats(None, sock)),
        OWN_QUEUED: lambda: Counts(None, held.queued()[main]),
        OWN_READ: lambda: main_counts(held.read()),
        # What queued() does for an address this process does not hold.
        LISTEN_DUMP: lambda: Counts(None, linux._tcp_listener_queues([address], sock)[main]),
    }


def _pyroute2_port(diag: DiagSocket, port: int) -> Counts:
    """Dumps of the port's LISTEN and ESTABLISHED sockets (the kernel filters on idiag_sport),
    counted here.

    Accepted connections have an inode; those still in the accept queue have none.
    """
    active = queued = 0
    for family in _WILDCARDS:
        for message in diag.get_sock_stats(
            family=family, states=_LISTEN_OR_ESTABLISHED, sport=port
        ):
            if message["idiag_src"] not in _LOOPBACK_SOURCES:
                continue
            if message["idiag_state"] == SS_LISTEN:
                queued += message["idiag_rqueue"]
            elif message["idiag_inode"]:
                active += 1
    return Counts(active, queued)


def _pyroute2_all(diag: DiagSocket, port: int) -> Counts:
    """Full dumps of LISTEN and ESTABLISHED sockets, each accepted connection attributed to the
    listener of its exact address, else to its family's wildcard listener on the port."""
    messages = [
        message
        for family in _WILDCARDS
        for message in diag.get_sock_stats(family=family, states=_LISTEN_OR_ESTABLISHED)
    ]
    listeners: dict[tuple[str, int], list[int]] = {}
    for message in messages:
        if message["idiag_state"] == SS_LISTEN:
            listener = listeners.setdefault((message["idiag_src"], message["idiag_sport"]), [0, 0])
            listener[1] += message["idiag_rqueue"]
    for message in messages:
        if message["idiag_state"] != SS_ESTABLISHED or not message["idiag_inode"]:
            continue
        sport = message["idiag_sport"]
        owner = listeners.get((message["idiag_src"], sport)) or listeners.get(
            (_WILDCARDS[message["idiag_family"]], sport)
        )
        if owner is not None:
            owner[0] += 1
    active, queued = listeners[(HOST, port)]
    return Counts(active, queued)


def _proc_hex(packed: bytes) -> str:
    """/proc/net/tcp's spelling of an address: each 32-bit word in host byte order, in hex."""
    return "".join(f"{word:08X}" for word in struct.unpack(f"={len(packed) // 4}I", packed))


def _proc_net_tcp(port: int) -> Counts:
    """ESTABLISHED sockets on HOST:port with an inode (accepted: queued ones have none) and the
    listener's rx_queue, which /proc/net/tcp gives as the accept queue's length for a LISTEN
    socket."""
    local_addresses = (
        f"{_proc_hex(socket.inet_pton(socket.AF_INET, HOST))}:{port:04X}".encode(),
        f"{_proc_hex(socket.inet_pton(socket.AF_INET6, '::ffff:' + HOST))}:{port:04X}".encode(),
    )
    active = queued = 0
    for path, local_address in zip(_PROC_NET_TCP, local_addresses, strict=True):
        with open(path, "rb") as proc:
            proc.readline()
            for line in proc:
                fields = line.split()
                if fields[1] != local_address:
                    continue
                if fields[3] == _PROC_LISTEN:
                    queued += int(fields[4].partition(b":")[2], 16)
                elif fields[3] == _PROC_ESTABLISHED and fields[9] != b"0":
                    active += 1
    return Counts(active, queued)


def _psutil(port: int) -> Counts:
    """ESTABLISHED connections on HOST:port owned by a process (queued ones belong to none yet);
    psutil has no accept queue length."""
    active = sum(
        1
        for connection in psutil.net_connections(kind="tcp")
        if connection.status == psutil.CONN_ESTABLISHED
        and connection.pid is not None
        and connection.laddr.port == port
        and connection.laddr.ip in _LOOPBACK_SOURCES
    )
    return Counts(active, None)


def _ss_lines(*arguments: str) -> list[str]:
    return subprocess.run(
        ["ss", "-Hn", *arguments], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def _ss(port: int) -> Counts:
    """Two ss(8) runs: accepted connections (inode not 0) and the listener's Recv-Q (its accept
    queue)."""
    established = _ss_lines("-te", "state", "established", f"( sport = :{port} )")
    listening = _ss_lines("-lt", f"( sport = :{port} )")
    active = sum(
        1 for line in established if (inode := _SS_INODE.search(line)) and inode.group(1) != "0"
    )
    queued = sum(int(line.split()[1]) for line in listening)
    return Counts(active, queued)


def _python_methods(
    ports: list[int], sock: InetDiagSocket, diag: DiagSocket, replay: RubyReplay
) -> dict[str, Method]:
    port = ports[0]
    methods = _raindrops_methods(ports, sock)
    methods[REPLAY_ONE] = lambda: replay.one(HOST, port)
    methods[REPLAY_ALL] = replay.every
    methods["pyroute2 DiagSocket, dump of the port + count"] = lambda: _pyroute2_port(diag, port)
    methods["pyroute2 DiagSocket, full dump + count per listener"] = lambda: _pyroute2_all(
        diag, port
    )
    methods["parse /proc/net/tcp + tcp6"] = lambda: _proc_net_tcp(port)
    methods[PSUTIL] = lambda: _psutil(port)
    methods["ss -tne established + ss -ltn (2 spawns)"] = lambda: _ss(port)
    return methods


# ---------------------------------------------------------------------------
# Ruby raindrops' requests, replayed: what the kernel does for them.

_NETLINK_SOCK_DIAG = 4
_TCPDIAG_GETSOCK = 18
_NLM_F_REQUEST_DUMP = 0x301
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_INET_DIAG_REQ_BYTECODE = 1
_INET_DIAG_BC_S_COND = 7
_BYTECODE_BYTES = 4 + 8 + 128
"""OPLEN in raindrops' linux_inet_diag.c: an op, a hostcond and a struct sockaddr_storage."""
_DONE_BYTES = 20


class RubyReplay:
    """Ruby raindrops' tcp_listener_stats requests, sent as it sends them: TCPDIAG_GETSOCK for
    LISTEN and ESTABLISHED sockets with a one-op filter program (an S_COND on the address and
    port, or on nothing for every listener), read with a buffer of getpagesize() bytes. The
    replies are drained, not counted (only each datagram's end is looked at, for NLMSG_DONE),
    so this times the kernel's share of Ruby's call and none of its counting."""

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG
        )
        self._buffer = bytearray(resource.getpagesize())
        self._sequence = 0

    def close(self) -> None:
        self._sock.close()

    def one(self, host: str, port: int) -> Counts:
        condition = struct.pack("=BBxxi", socket.AF_INET, 32, port) + socket.inet_aton(host)
        self._dump(condition)
        return UNCOUNTED

    def every(self) -> Counts:
        self._dump(struct.pack("=BBxxi", socket.AF_UNSPEC, 0, -1))
        return UNCOUNTED

    def _dump(self, condition: bytes) -> None:
        bytecode = struct.pack(
            "=BBH", _INET_DIAG_BC_S_COND, _BYTECODE_BYTES, _BYTECODE_BYTES + 4
        ) + condition.ljust(_BYTECODE_BYTES - 4, b"\0")
        states = (1 << SS_LISTEN) | (1 << SS_ESTABLISHED)
        request = struct.pack("=BBBB48xII", 0, 0, 0, 0, states, 0)
        attribute = struct.pack("=HH", 4 + len(bytecode), _INET_DIAG_REQ_BYTECODE) + bytecode
        self._sequence += 1
        length = 16 + len(request) + len(attribute)
        header = struct.pack(
            "=IHHII", length, _TCPDIAG_GETSOCK, _NLM_F_REQUEST_DUMP, self._sequence, os.getpid()
        )
        self._sock.send(header + request + attribute)
        buffer = self._buffer
        while True:
            received = self._sock.recv_into(buffer)
            if received >= _DONE_BYTES and self._ends(received):
                return

    def _ends(self, received: int) -> bool:
        """Whether the datagram ends the dump: its last message NLMSG_DONE (or an error) of ours."""
        buffer = self._buffer
        for size, kind in ((_DONE_BYTES, _NLMSG_DONE), (36, _NLMSG_ERROR)):
            if received < size:
                continue
            length, message_type, _, sequence = struct.unpack_from("=IHHI", buffer, received - size)
            if (length, message_type, sequence) == (size, kind, self._sequence):
                if kind == _NLMSG_ERROR:
                    raise OSError("the kernel refused Ruby raindrops' request")
                return True
        return False


# ---------------------------------------------------------------------------
# Ruby raindrops, timed inside Ruby.

_RUBY_SCRIPT = """
require "raindrops"
repeats = Integer(ARGV[0])
main = ARGV[1]
addresses = ARGV[1..]
sock = Raindrops::InetDiagSocket.new
clock = Process::CLOCK_MONOTONIC
run = lambda do |number, body|
  start = Process.clock_gettime(clock, :nanosecond)
  number.times { body.call }
  Process.clock_gettime(clock, :nanosecond) - start
end
cases = {
  "one" => -> { Raindrops::Linux.tcp_listener_stats([main], sock) },
  "four" => -> { Raindrops::Linux.tcp_listener_stats(addresses, sock) },
  "all" => -> { Raindrops::Linux.tcp_listener_stats(nil, sock) },
}
cases.each do |name, body|
  # Like timeit's autorange: the first of 1, 2, 5, 10, 20, 50... calls that takes 0.2 s.
  number = 1
  steps = [2, 2.5, 2].cycle
  number = (number * steps.next).round while run.call(number, body) < 200_000_000
  best = Array.new(repeats) { run.call(number, body) }.min.fdiv(number)
  stats = body.call[main]
  puts [name, best, stats.active, stats.queued].join(" ")
end
"""
_RUBY_ROWS = {"one": RUBY_ONE, "four": RUBY_FOUR, "all": RUBY_ALL}


def _ruby(ports: list[int]) -> tuple[dict[str, float], dict[str, Counts]]:
    """Ruby raindrops' three queries: µs per call (best of REPEATS runs) and counts, by row
    label."""
    command = ["ruby", "-e", _RUBY_SCRIPT, str(REPEATS), *(f"{HOST}:{port}" for port in ports)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    micros: dict[str, float] = {}
    counts: dict[str, Counts] = {}
    for line in output.splitlines():
        name, ns, active, queued = line.split()
        micros[_RUBY_ROWS[name]] = float(ns) / 1000
        counts[_RUBY_ROWS[name]] = Counts(int(active), int(queued))
    return micros, counts


# ---------------------------------------------------------------------------
# Measuring and reporting.


def _interleaved(methods: dict[str, Method], runs: int) -> dict[str, float]:
    """µs per call of each method: the best of its autorange run and `runs` more, the methods
    taking turns run by run (the ratios compare methods measured over the same seconds)."""
    timers = {label: timeit.Timer(method) for label, method in methods.items()}
    numbers: dict[str, int] = {}
    best: dict[str, float] = {}
    for label, timer in timers.items():
        numbers[label], seconds = timer.autorange()
        best[label] = seconds / numbers[label]
    for _ in range(runs):
        for label, timer in timers.items():
            best[label] = min(best[label], timer.timeit(numbers[label]) / numbers[label])
    return {label: seconds * 1e6 for label, seconds in best.items()}


def _measure(ports: list[int], sock: InetDiagSocket, ruby: bool) -> Measured:
    """Every method's µs per call and counts in the current scenario."""
    replay = RubyReplay()
    try:
        with DiagSocket() as diag:
            diag.bind()
            methods = _python_methods(ports, sock, diag, replay)
            counts = {label: method() for label, method in methods.items()}
            micros = _interleaved(methods, REPEATS)
    finally:
        replay.close()
    if ruby:
        ruby_micros, ruby_counts = _ruby(ports)
        micros.update(ruby_micros)
        counts.update(ruby_counts)
    started = time.perf_counter()
    linux._scan_held()
    scan_ms = (time.perf_counter() - started) * 1000
    descriptors = len(os.listdir("/proc/self/fd"))
    return Measured(_host_sockets(), micros, counts, descriptors, scan_ms)


def _labels(results: dict[str, Measured]) -> list[str]:
    """Row labels in table order: this project, then Ruby's, then the rest as measured."""
    labels = list(next(iter(results.values())).micros)
    first = [RAINDROPS_ONE, RAINDROPS_FOUR, RAINDROPS_ALL, OWN_QUEUED, OWN_READ, LISTEN_DUMP]
    first += [RUBY_ONE, RUBY_FOUR, RUBY_ALL, REPLAY_ONE, REPLAY_ALL]
    return [label for label in first if label in labels] + [
        label for label in labels if label not in first
    ]


def _micros(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _time_table(results: dict[str, Measured]) -> str:
    rows = [
        (
            "host TCP sockets (/proc/net/tcp + tcp6)",
            *(f"{m.host_sockets:,}" for m in results.values()),
        )
    ]
    rows += [
        (label, *(_micros(m.micros[label]) for m in results.values())) for label in _labels(results)
    ]
    rows.append(
        (
            f"scan of this process's descriptors (every {linux.HELD_RESCAN_S:g} s), ms",
            *(f"{m.scan_ms:.1f} ({m.descriptors:,} fds)" for m in results.values()),
        )
    )
    return table(["µs per call", *results], rows)


def _disagreements(results: dict[str, Measured]) -> dict[str, list[str]]:
    """Row label -> the scenarios where its counts are not the expected ones."""
    expected = {scenario.name: scenario.expected for scenario in SCENARIOS}
    found: dict[str, list[str]] = {}
    for name, measured in results.items():
        for label, counts in measured.counts.items():
            if not counts.agrees(expected[name]):
                found.setdefault(label, []).append(
                    f"{counts} in scenario {name} (expected {expected[name]})"
                )
    return found


def _counts_table(results: dict[str, Measured]) -> str:
    expected = {scenario.name: scenario.expected for scenario in SCENARIOS}
    rows = [("expected", *(str(expected[name]) for name in results))]
    rows += [
        (label, *(str(m.counts[label]) for m in results.values()))
        for label in _labels(results)
        if not label.startswith("Ruby raindrops' request replayed")
    ]
    return table(["active/queued", *results], rows)


def _verdict(passed: bool) -> str:
    return "pass" if passed else "FAIL"


def _ratio_row(
    measured: Measured, name: str, labels: tuple[str, str], goal: float | None, at_most: bool
) -> tuple[str, str, str, str]:
    """numerator / denominator with its goal and verdict ("info" without a goal); "skipped"
    when a method was not measured (Ruby raindrops missing)."""
    numerator, denominator = labels
    bound = "-" if goal is None else f"{'<=' if at_most else '>='} {goal:g}x"
    if denominator not in measured.micros or numerator not in measured.micros:
        return (name, "-", bound, "skipped")
    ratio = measured.micros[numerator] / measured.micros[denominator]
    verdict = "info" if goal is None else _verdict(at_most == (ratio <= goal))
    if goal is not None and denominator in (REPLAY_ONE, REPLAY_ALL):
        # The replay leaves Ruby's counting out: it is faster than Ruby, so a ratio to it
        # bounds the ratio to Ruby from above. A pass holds; a miss tells nothing.
        verdict = "pass (proxy)" if ratio <= goal else "unknown (proxy)"
    return (name, f"{ratio:.2f}x", bound, verdict)


def _targets_table(measured: Measured) -> str:
    """The targets at TARGET_SCENARIO connections. Ruby's are skipped without Ruby raindrops;
    the replay of its requests stands in, marked as a proxy (it leaves out Ruby's counting)."""
    own = measured.micros[OWN_QUEUED]
    rows = [
        (
            "held listener's queued (TCP_INFO), µs",
            f"{own:.1f}",
            f"<= {OWN_QUEUED_US_MAX:g}",
            _verdict(own <= OWN_QUEUED_US_MAX),
        ),
        _ratio_row(
            measured,
            "held listener's queued / netlink, 1 address",
            (OWN_QUEUED, RAINDROPS_ONE),
            None,
            True,
        ),
        _ratio_row(
            measured,
            "held listener's queued / LISTEN dump (not held)",
            (OWN_QUEUED, LISTEN_DUMP),
            None,
            True,
        ),
        _ratio_row(
            measured,
            "raindrops 1 address / Ruby 1 address",
            (RAINDROPS_ONE, RUBY_ONE),
            ONE_VS_RUBY_MAX,
            True,
        ),
        _ratio_row(
            measured,
            "raindrops 1 address / Ruby's request replayed",
            (RAINDROPS_ONE, REPLAY_ONE),
            ONE_VS_RUBY_MAX,
            True,
        ),
        _ratio_row(
            measured,
            "raindrops held listener / Ruby 1 address",
            (OWN_READ, RUBY_ONE),
            ONE_VS_RUBY_MAX,
            True,
        ),
        _ratio_row(
            measured,
            "raindrops held listener / Ruby's request replayed",
            (OWN_READ, REPLAY_ONE),
            ONE_VS_RUBY_MAX,
            True,
        ),
        _ratio_row(
            measured,
            "psutil / raindrops 1 address",
            (PSUTIL, RAINDROPS_ONE),
            PSUTIL_VS_ONE_MIN,
            False,
        ),
        _ratio_row(
            measured,
            "raindrops all listeners / Ruby all listeners",
            (RAINDROPS_ALL, RUBY_ALL),
            ALL_VS_RUBY_MAX,
            True,
        ),
        _ratio_row(
            measured,
            "raindrops all listeners / Ruby's request replayed",
            (RAINDROPS_ALL, REPLAY_ALL),
            ALL_VS_RUBY_MAX,
            True,
        ),
    ]
    return table(["target", "measured", "goal", "result"], rows)


def _ehash_note() -> str:
    """The size of the kernel's established-socket hash: every inet_diag dump walks all its
    buckets."""
    try:
        with open(_EHASH_ENTRIES) as entries:
            return (
                f"TCP established hash: {int(entries.read()):,} buckets, "
                "walked by every inet_diag dump"
            )
    except OSError:  # Linux < 6.1 has no tcp_ehash_entries
        return "TCP established hash: size unknown"


def main() -> int:
    _raise_file_limit()
    ruby = ruby_raindrops_installed()
    python = sys.version.split()[0]
    print(
        f"raindrops listener stats benchmark: Python {python}, {psutil.cpu_count()} CPUs, "
        f"listeners on {HOST}"
    )
    print(
        f"best of autorange + {REPEATS} timeit runs per method, the methods taking turns; "
        "Ruby raindrops timed inside Ruby"
    )
    print(_ehash_note(), end="\n\n")
    if not ruby:
        print("Ruby raindrops: skipped (ruby-raindrops is not installed)\n")
    results: dict[str, Measured] = {}
    with InetDiagSocket() as sock:
        for scenario in SCENARIOS:
            started = time.monotonic()
            with _scenario(scenario) as ports:
                set_up = time.monotonic() - started
                results[scenario.name] = _measure(ports, sock, ruby)
            took = time.monotonic() - started
            print(
                f"scenario {scenario.name}: set up in {set_up:.1f} s, "
                f"measured in {took - set_up:.1f} s",
                flush=True,
            )
    print(f"\n1. time per call; scenarios: accepted connections on one listener on {HOST}, or a")
    print(
        f"   listen({FULL_QUEUE_BACKLOG}) listener holding {FULL_QUEUE_BACKLOG + 1} "
        "connections nobody accepts"
    )
    print(_time_table(results), end="\n\n")
    print("2. counts of the main listener (psutil cannot see accept queues: '-')")
    print(_counts_table(results))
    disagreements = _disagreements(results)
    for label, lines in disagreements.items():
        print(f"DISAGREES: {label}: {'; '.join(lines)}")
    if not disagreements:
        print("all methods agree with the expected counts")
    print(f"\ntargets at {TARGET_SCENARIO} connections")
    print(_targets_table(results[TARGET_SCENARIO]))
    ours = {RAINDROPS_ONE, RAINDROPS_FOUR, RAINDROPS_ALL, OWN_QUEUED, OWN_READ, LISTEN_DUMP}
    return 1 if disagreements.keys() & ours else 0


if __name__ == "__main__":
    sys.exit(main())
