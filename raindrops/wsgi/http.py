"""What every raindrops WSGI endpoint shares: who may ask, in which format, and how to answer."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs

from raindrops import exposition

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOW = ("127.0.0.0/8", "::1/128")
"""Clients allowed to read an endpoint by default: loopback (a unix socket client is local too)."""
CLIENT_SOCKET_KEYS = ("gunicorn.socket", "raindrops.socket")
"""environ keys where servers put the client's socket (raindrops.watcher.server sets the second)."""


def reply(
    start_response: StartResponse,
    method: str,
    status: str,
    content_type: str,
    body: bytes,
    extra: Sequence[tuple[str, str]] = (),
) -> list[bytes]:
    """A complete answer with its length; HEAD gets the headers only."""
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra]
    start_response(status, headers)
    return [] if method == "HEAD" else [body]


def plain(
    start_response: StartResponse, method: str, status: str, extra: Sequence[tuple[str, str]] = ()
) -> list[bytes]:
    """A short text answer that is its status's reason, such as raindrops' "Not Found"."""
    return reply(
        start_response, method, status, "text/plain", status.partition(" ")[2].encode(), extra
    )


def client_socket(environ: Environ) -> Any:
    """The client's socket where the server exposes it (gunicorn, raindrops' server), else None."""
    for key in CLIENT_SOCKET_KEYS:
        sock = environ.get(key)
        if hasattr(sock, "fileno"):
            return sock
    return None


def client_allowed(environ: Environ, networks: Iterable[Network]) -> bool:
    """Whether the client of this request is in one of `networks` (an endpoint's `allow`)."""
    remote = environ.get("REMOTE_ADDR") or ""
    if not remote:
        return True  # a unix socket peer is on this host
    try:
        address = ipaddress.ip_address(remote.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def endpoint_settings(path: str, allow: Iterable[str]) -> tuple[str, tuple[Network, ...]]:
    """Checks where a statistics endpoint is mounted and parses who may read it."""
    if not isinstance(path, str):
        raise TypeError(f"path must be a str starting with '/', not {type(path).__name__}")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', not {path!r}")
    if isinstance(allow, str):
        raise TypeError(f"allow must be a list of networks, not a single str {allow!r}")
    return path, tuple(ipaddress.ip_network(network) for network in allow)


def requested_format(environ: Environ) -> str | None:
    """?format=, else what Accept asks for, else raindrops' text; None for an unknown format."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    asked = query.get("format", [""])[-1]
    if asked:
        return asked if asked in exposition.FORMATS else None
    accept = environ.get("HTTP_ACCEPT", "")
    if "application/openmetrics-text" in accept:
        return "openmetrics"
    if "text/plain" in accept and "version=0.0.4" in accept:
        return "prometheus"
    return "text"


def endpoint_request(
    environ: Environ, start_response: StartResponse, allow: Iterable[Network]
) -> tuple[str, list[bytes] | None]:
    """Checks a statistics request: GET or HEAD, an allowed client, a known format.

    Returns (format, None) to go on, or ("", body) after answering 405, 403 or 400.
    """
    method = environ.get("REQUEST_METHOD", "GET")
    if method not in ("GET", "HEAD"):
        refusal = b"405 Method Not Allowed\n"
        return "", reply(
            start_response,
            method,
            "405 Method Not Allowed",
            "text/plain",
            refusal,
            [("Allow", "GET, HEAD")],
        )
    if not client_allowed(environ, allow):
        return "", reply(start_response, method, "403 Forbidden", "text/plain", b"403 Forbidden\n")
    form = requested_format(environ)
    if form is None:
        refusal = b"unknown format: use text, prometheus, openmetrics or json\n"
        return "", reply(start_response, method, "400 Bad Request", "text/plain", refusal)
    return form, None


def serve(
    start_response: StartResponse,
    method: str,
    form: str,
    report: exposition.Report,
    extra: Sequence[tuple[str, str]] = (),
) -> list[bytes]:
    """200 with `report` rendered in `form`."""
    content_type, body = exposition.render(form, report)
    return reply(start_response, method, "200 OK", content_type, body, extra)
