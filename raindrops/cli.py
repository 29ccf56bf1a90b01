"""The `raindrops` command line (also `python -m raindrops`).

`raindrops listeners` prints listener statistics like raindrops'
linux-listener-stats example: every TCP and unix listener of the host by
default, once or every --interval seconds. `raindrops watch` serves the
Watcher's dashboard and endpoints for the host's listeners. `raindrops
cleanup` removes this user's shared memory segments of a stopped server (a
server's exit hook runs it: uWSGI's --exec-as-user-atexit).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import NoReturn, TextIO

import raindrops
from raindrops import exposition, linux, segments
from raindrops.watcher import Watcher
from raindrops.watcher.server import make_server

DISTRIBUTION = "raindrops-stats"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
ADDRESS_WIDTH_MIN = 7
ADDRESS_WIDTH_MAX = 35


class _Parser(argparse.ArgumentParser):
    """Reports bad input as one line on stderr and exit status 2, never a traceback."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {value}")
        return value

    return parse


def _version() -> str:
    """The installed distribution's version; else the package's (a bare checkout)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return raindrops.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="raindrops", description="Real-time statistics for preforking servers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    listeners = commands.add_parser(
        "listeners",
        help="print active and queued connections of listening sockets",
        description="Print active (accepted) and queued (in the accept queue) connections "
        "per listener. "
        "ADDR is HOST:PORT ([V6]:PORT for IPv6) or a unix socket path (starting with / or @).",
    )
    listeners.add_argument(
        "addresses", nargs="*", metavar="ADDR", help="listeners to show (default: all)"
    )
    listeners.add_argument(
        "--interval", "-d", type=_positive_float, metavar="S", help="repeat every S seconds"
    )
    listeners.add_argument(
        "--count", "-n", type=_count(1), metavar="N", help="stop after N reports"
    )
    listeners.add_argument(
        "--queued-min",
        "-t",
        type=_count(0),
        default=0,
        metavar="N",
        help="show only rows with queued >= N",
    )
    listeners.add_argument("--format", choices=("text", "json", "prometheus"), default="text")
    _add_watch(commands)
    _add_cleanup(commands)
    return parser


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(stats: Mapping[str, linux.ListenStats], form: str, stamp: str, width: int) -> str:
    if form == "json":
        return (
            json.dumps({"timestamp": stamp, "listeners": exposition.listeners_json(stats)}) + "\n"
        )
    if form == "prometheus":
        return exposition.listeners_prometheus(stats)
    return "".join(
        exposition.tail_line(stamp, address, stat.active, stat.queued, width)
        for address, stat in exposition.printed(stats).items()
    )


def run_listeners(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    source = linux.ListenerSet(options.addresses or None)
    try:
        shown = [len(exposition.printable_name(address)) for address in options.addresses]
        width = min(max([ADDRESS_WIDTH_MIN, *shown]), ADDRESS_WIDTH_MAX)
        if options.format == "text":
            err.write(exposition.tail_line("timestamp", "address", "active", "queued", width))
        count = options.count if options.count is not None else (None if options.interval else 1)
        report = 0
        while count is None or report < count:
            if report:
                time.sleep(options.interval or 0)
            stats = {a: s for a, s in source.read().items() if s.queued >= options.queued_min}
            out.write(render(stats, options.format, _timestamp(), width))
            out.flush()
            report += 1
    finally:
        source.close()
    return 0


# `raindrops watch`: the Watcher on its own, for any server of the host.

WATCH_BIND = "127.0.0.1:9000"
WATCH_TAIL_STREAMS = 16
"""A thread per connection: streams only cost threads, not the dashboard's responsiveness."""


def _bind_address(text: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or PORT (on 127.0.0.1)."""
    host, colon, port_text = text.rpartition(":")
    if not colon:
        host, port_text = "127.0.0.1", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, [V6]:PORT or PORT, not {text!r}")
    return host, int(port_text)


def _add_watch(commands: argparse._SubParsersAction[_Parser]) -> None:
    watch = commands.add_parser(
        "watch",
        help="serve the Watcher dashboard for the listeners of this host",
        description="Serve raindrops.Watcher over HTTP: a live dashboard of active and queued "
        "connections per listener, and raindrops' per-listener endpoints. Watches every TCP and "
        "unix listener of the host, or "
        "the ADDRs given (HOST:PORT, [V6]:PORT, or a unix socket path starting with / or @).",
    )
    watch.add_argument(
        "addresses", nargs="*", metavar="ADDR", help="listeners to watch (default: all)"
    )
    watch.add_argument(
        "--bind",
        "-b",
        type=_bind_address,
        default=_bind_address(WATCH_BIND),
        metavar="HOST:PORT",
        help=f"where to serve the dashboard (default: {WATCH_BIND})",
    )
    watch.add_argument(
        "--delay",
        "-d",
        type=_positive_float,
        default=1.0,
        metavar="S",
        help="seconds between samples",
    )
    watch.add_argument(
        "--history",
        type=_count(2),
        default=300,
        metavar="N",
        help="samples the dashboard charts (default: 300)",
    )
    watch.add_argument(
        "--allow",
        action="append",
        metavar="CIDR",
        help="client networks that may read the dashboard (repeatable; default: loopback only)",
    )
    watch.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="proxies whose forwarding headers name the client (repeatable; 'unix' for a unix "
        "socket peer)",
    )
    watch.add_argument(
        "--tail-streams",
        type=_count(0),
        default=WATCH_TAIL_STREAMS,
        metavar="N",
        help=f"/tail streams served at once (default: {WATCH_TAIL_STREAMS}; one thread each)",
    )


def run_watch(options: argparse.Namespace, err: TextIO) -> int:
    """Serves until interrupted; the sampler thread and the server's threads are daemons."""
    access = {"trusted_proxies": options.trusted_proxy}
    if options.allow:
        access["allow"] = options.allow
    watcher = Watcher(
        options.addresses or None,
        delay=options.delay,
        history=options.history,
        tail_streams_max=options.tail_streams,
        **access,
    )
    host, port = options.bind
    server = make_server(host, port, watcher)
    watcher.start()
    try:
        shown = f"[{host}]" if ":" in host else host
        err.write(f"raindrops watch: serving http://{shown}:{server.server_port}/ (Ctrl-C stops)\n")
        err.flush()
        server.serve_forever()
    finally:
        server.server_close()
        watcher.close()
    return 0


# `raindrops cleanup`: a stopped server's segments, for servers without a Python exit hook.


def _add_cleanup(commands: argparse._SubParsersAction[_Parser]) -> None:
    cleanup = commands.add_parser(
        "cleanup",
        help="remove this user's shared memory segments of a server that stops",
        description="Remove the segments in /dev/shm that the workers of the server whose master "
        "is PID named after it (run it as that server's last act: uWSGI's "
        "--exec-as-user-atexit 'raindrops cleanup --master $PPID'); without --master, those of "
        "every master of this PID namespace that is gone. Only regular files of this user go. "
        "Prints each name it removes.",
    )
    cleanup.add_argument(
        "--master",
        type=_count(1),
        metavar="PID",
        help="the running master whose segments go (its start time tells it from a process "
        "that got the pid of an earlier one)",
    )


def run_cleanup(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if options.master is None:
        removed = segments.remove_stale_segments()
    else:
        master = segments.Server.running(options.master)
        if master is None:
            err.write(
                f"raindrops: no process {options.master} runs here, or /proc cannot tell its "
                "start time: nothing removed (`raindrops cleanup` removes those of stopped "
                "masters)\n"
            )
            return 1
        removed = segments.remove_server_segments(master)
    out.writelines(name + "\n" for name in removed)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    try:
        if options.command == "watch":
            return run_watch(options, sys.stderr)
        if options.command == "cleanup":
            return run_cleanup(options, sys.stdout, sys.stderr)
        return run_listeners(options, sys.stdout, sys.stderr)
    except BrokenPipeError:
        # The reader left (`| head`): stop quietly, and keep Python's exit-time
        # flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ValueError, TypeError) as error:
        sys.stderr.write(f"raindrops: error: {error}\n")
        return EXIT_USAGE
    except OSError as error:
        sys.stderr.write(f"raindrops: {error}\n")
        return 1
