"""Unix socket names that are not UTF-8, or hold newlines, quotes and backslashes, in every output.

Anyone who can create a file can name a listening socket. Every format must stay well formed
whatever the name: no exception, no forged line, the same listener under the same (escaped)
name in each, and distinct names kept distinct.
"""

from __future__ import annotations

import html
import json
import os
import random
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest

from raindrops import Middleware, Watcher, exposition, linux
from raindrops.scoreboard import Scoreboard
from testsupport import formats, processes, programs

NAMES = [
    b"nl\nx",
    b'q"x',
    b"bs\\x",
    b"ff\xff\n",
    b"nel\xc2\x85x",
    b"ls\xe2\x80\xa8x",
    b"cr\rx",
    b"tab\tx",
    b"del\x7fx",
    b"dup\\xff",
    b"dup\xff",
    b'f\nraindrops_calling 9\n# "}',
]
"""Newline, quote, backslash; an undecodable byte; Unicode line breaks (NEL, LINE SEPARATOR)
that str.splitlines() splits on; other controls; a pair that a naive \\xNN escape would merge; a
name that tries to forge a sample."""


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[dict[bytes, str]]:
    """A unix listener at each name, each with one connection in its accept queue.

    Maps each path (bytes) to its key in raindrops.linux (os.fsdecode'd)."""
    with ExitStack() as stack:
        paths = {}
        for name in NAMES:
            path = os.fsencode(tmp_path) + b"/" + name
            server = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            server.bind(path)
            server.listen(8)
            client = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            client.connect(path)
            paths[path] = os.fsdecode(path)
        yield paths


def unescape(text: str) -> bytes:
    """The name's bytes back from its printed form: "\\\\" is a backslash, "\\xNN" a byte."""
    out = bytearray()
    position = 0
    while position < len(text):
        if text.startswith("\\\\", position):
            out += b"\\"
            position += 2
        elif text.startswith("\\x", position):
            out.append(int(text[position + 2 : position + 4], 16))
            position += 4
        else:
            character = text[position]
            assert character.isprintable() and character != " ", f"{character!r} in {text!r}"
            out += character.encode("utf-8")
            position += 1
    return bytes(out)


def label_value(text: str) -> str:
    """A Prometheus label value as written between the quotes, unescaped."""
    return re.sub(r"\\(.)", lambda match: {"n": "\n"}.get(match[1], match[1]), text)


def lines_of(body: bytes) -> list[str]:
    """The body's lines: valid UTF-8, split only at "\\n", and none that splitlines() would split
    further (a reader using it must see the same lines)."""
    text = body.decode("utf-8")
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    for line in lines:
        assert line.splitlines() in ([line], []), line
    return lines


def check_text(body: bytes, paths: dict[bytes, str]) -> None:
    lines = lines_of(body)
    stats = formats.parse_text(body.decode("utf-8"))
    assert len(lines) == 2 + 2 * len(stats.listeners)
    assert {unescape(name): stat for name, stat in stats.listeners.items()} == {
        path: (0, 1) for path in paths
    }


def check_prometheus(body: bytes, paths: dict[bytes, str], openmetrics: bool) -> None:
    text = body.decode("utf-8")
    lines_of(body)
    if not openmetrics:
        formats.check_prometheus_text(text)
    samples = formats.parse_prometheus(text, openmetrics)
    found: dict[bytes, list[float]] = {}
    for key, value in samples.items():
        match = re.fullmatch(r'raindrops_listener_(active|queued)\{listener="(.*)"\}', key)
        if match is not None:
            found.setdefault(unescape(label_value(match[2])), []).append(value)
    assert found == {path: [0.0, 1.0] for path in paths}
    assert samples.get("raindrops_calling", 0) == 0, "a forged sample"


def check_json(body: bytes, paths: dict[bytes, str]) -> None:
    document = json.loads(body.decode("utf-8"))
    listeners = document["listeners"]
    for name in listeners:
        name.encode("utf-8")  # no lone surrogate: any strict JSON reader takes it
    assert {unescape(name): stat for name, stat in listeners.items()} == {
        path: {"active": 0, "queued": 1} for path in paths
    }


def check(form: str, body: bytes, paths: dict[bytes, str]) -> None:
    if form == "text":
        check_text(body, paths)
    elif form == "json":
        check_json(body, paths)
    else:
        check_prometheus(body, paths, form == "openmetrics")


def test_the_kernel_reports_every_name(hostile: dict[bytes, str]) -> None:
    stats = linux.unix_listener_stats(list(hostile))
    assert stats == {key: (0, 1) for key in hostile.values()}, "the Python API keeps raw names"


@pytest.mark.parametrize("form", exposition.FORMATS)
def test_exposition_renders_every_format(hostile: dict[bytes, str], form: str) -> None:
    board = Scoreboard()
    try:
        report = exposition.MiddlewareReport(
            board.totals(), linux.unix_listener_stats(list(hostile))
        )
        check(form, exposition.render(form, report)[1], hostile)
    finally:
        board.close()


def test_promtool_accepts_the_exposition(hostile: dict[bytes, str]) -> None:
    promtool = programs.require("promtool")
    board = Scoreboard()
    try:
        report = exposition.MiddlewareReport(
            board.totals(), linux.unix_listener_stats(list(hostile))
        )
        body = exposition.render("prometheus", report)[1]
    finally:
        board.close()
    result = processes.run([promtool, "check", "metrics"], input=body, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def middleware_get(app: Middleware, form: str) -> bytes:
    seen: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append(status)
        return lambda data: None

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/_raindrops",
        "QUERY_STRING": f"format={form}",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": BytesIO(),
        "wsgi.multiprocess": False,
    }
    body = b"".join(app(environ, start_response))
    assert seen == ["200 OK"]
    return body


@pytest.mark.parametrize("form", exposition.FORMATS)
def test_middleware_endpoint_every_format(hostile: dict[bytes, str], form: str) -> None:
    app = Middleware(lambda environ, start_response: [], listeners=list(hostile.values()))
    try:
        check(form, middleware_get(app, form), hostile)
    finally:
        app.stats.close()


def run_cli(*args: str | bytes) -> bytes:
    """stdout of `raindrops listeners ARGS`, which must succeed, its stderr at most the header."""
    command = [os.fsencode(sys.executable), b"-m", b"raindrops", b"listeners"]
    result = processes.run([*command, *map(os.fsencode, args)], timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stderr in (b"", b"timestamp address active queued\n".replace(b" ", b"")) or (
        result.stderr.split() == [b"timestamp", b"address", b"active", b"queued"]
    ), result.stderr
    return bytes(result.stdout)


def test_cli_text_one_line_per_listener(hostile: dict[bytes, str]) -> None:
    lines = lines_of(run_cli(*hostile))
    assert len(lines) == len(hostile)
    rows = {}
    for line in lines:
        stamp, name, active, queued = line.split()
        rows[unescape(name)] = (int(active), int(queued))
    assert rows == {path: (0, 1) for path in hostile}


def test_cli_every_listener_of_the_host(hostile: dict[bytes, str]) -> None:
    """Without ADDRs the CLI prints every listener: each line still four fields."""
    rows = {}
    for line in lines_of(run_cli()):
        stamp, name, active, queued = line.split()
        rows[unescape(name)] = (int(active), int(queued))
    assert {path: rows.get(path) for path in hostile} == {path: (0, 1) for path in hostile}


def test_cli_json_and_prometheus(hostile: dict[bytes, str]) -> None:
    check_json(run_cli(*hostile, "--format", "json"), hostile)
    check_prometheus(run_cli(*hostile, "--format", "prometheus"), hostile, openmetrics=False)


# The Watcher: its names are the printed ones, in its JSON, its links, its pages and its tail.


def watcher_get(app: Watcher, path: str) -> tuple[str, Any]:
    seen: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append(status)
        return lambda data: None

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": unquote(path, "latin-1"),  # as a server hands it over: bytes as latin-1
        "QUERY_STRING": "",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "watch.test",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
    }
    body = app(environ, start_response)
    return seen[0], body


def test_watcher_series_pages_and_tail(hostile: dict[bytes, str]) -> None:
    with Watcher(list(hostile.values()), delay=0.01) as app:
        app.start()
        status, body = watcher_get(app, "/series.json")
        series = json.loads(b"".join(body).decode("utf-8"))
        names = list(series["listeners"])
        assert {unescape(name) for name in names} == set(hostile)
        for name in names:
            name.encode("utf-8")
            # The dashboard links with encodeURIComponent(name), which a lone surrogate breaks.
            link = quote(name, safe="")
            for page in ("active", "queued"):
                for extension in ("txt", "html", "json"):
                    status, body = watcher_get(app, f"/{page}/{link}.{extension}")
                    assert status == "200 OK", (name, page, extension)
                    b"".join(body).decode("utf-8")
            status, tail = watcher_get(app, f"/tail/{link}.txt")
            assert status == "200 OK"
            line = next(iter(tail))
            tail.close()
            (text,) = lines_of(line)
            stamp, shown, active, queued = text.split()
            assert (shown, active, queued) == (name, "0", "1")
        index = b"".join(watcher_get(app, "/")[1]).decode("utf-8")
        for name in names:
            assert f">{html.escape(name)}</a>" in index


@pytest.mark.parametrize(
    ("name", "printed"),
    [
        ("/run/app.sock", "/run/app.sock"),
        ("/run/café", "/run/café"),
        ("/run/my app", "/run/my\\x20app"),
        ("a\\xff", "a\\\\xff"),
        (os.fsdecode(b"a\xff"), "a\\xff"),
        ("a\nb", "a\\x0ab"),
        ("\u0085\u2028\u202e", "\\xc2\\x85\\xe2\\x80\\xa8\\xe2\\x80\\xae"),
        ("\ud800", "\\xed\\xa0\\x80"),
        ('"', '"'),
    ],
)
def test_printable_name(name: str, printed: str) -> None:
    assert exposition.printable_name(name) == printed


def test_printable_name_keeps_every_byte_string_apart() -> None:
    """Reversible, hence injective: two listeners never print as one (a duplicate sample would
    make the whole Prometheus exposition invalid)."""
    generator = random.Random(11)
    alphabet = b"\\x\n \"'a\xc2\x85\xe2\x80\xa8\xff\x00\x7f"
    for _ in range(3000):
        raw = bytes(generator.choice(alphabet) for _ in range(generator.randrange(1, 12)))
        raw += bytes(generator.randrange(256) for _ in range(generator.randrange(4)))
        printed = exposition.printable_name(os.fsdecode(raw))
        assert unescape(printed) == raw
        assert printed.isprintable() and " " not in printed
