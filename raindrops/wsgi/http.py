"""What every raindrops WSGI endpoint shares: who may ask, in which format, and how to answer.

Who may ask is one AccessRule for every endpoint (the middleware's, LastDataRecv's and every
route of the Watcher). A reverse proxy on this host makes every client it forwards look local,
so the address the connection comes from is believed only when no forwarding header
(`Forwarded`, `X-Forwarded-For`, `X-Real-IP`) says otherwise: a request that carries one is
refused unless its peer is a trusted proxy, and then it is judged by the client those headers
name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from raindrops import exposition

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_ALLOW = ("127.0.0.0/8", "::1/128")
"""Clients allowed to read an endpoint by default: loopback (a unix socket client is local too)."""
UNIX = "unix"
"""In `trusted_proxies`: a peer on a unix socket (an empty REMOTE_ADDR) is a trusted proxy."""
HOPS_MAX = 32
"""The longest chain of addresses a forwarding header may carry; a longer one is refused."""
CLIENT_SOCKET_KEYS = ("gunicorn.socket", "raindrops.socket")
"""environ keys where servers put the client's socket (raindrops.watcher.server sets the second)."""
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"(?:\[[0-9A-Za-z:.%]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]*)(?::[0-9]*)?")
"""An authority without user information (RFC 3986): a reg-name or an IP literal, a port."""


# Addresses in forwarding headers.


def parse_address(text: str) -> Address:
    """An address as a peer or a proxy writes it: "192.0.2.1", "2001:db8::1", "[2001:db8::1]",
    with an optional ":port" ("192.0.2.1:4711", "[2001:db8::1]:4711") and IPv6 zone. An
    IPv4-mapped IPv6 address is its IPv4 address, so one network rule covers both spellings.
    Anything else ("unknown", an obfuscated "_name", a host name) is a ValueError: a client
    that cannot be judged is refused, not guessed."""
    host = text.strip()
    if host.startswith("["):
        host, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and _is_port(rest[1:]))):
            raise ValueError(f"not an address: {text!r}")
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
        if not _is_port(port):
            raise ValueError(f"not an address: {text!r}")
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        raise ValueError(f"not an address: {text!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_port(digits: str) -> bool:
    return digits.isascii() and digits.isdigit() and len(digits) <= 5


def _hops(value: str, header: str) -> list[str]:
    """A header's comma-separated entries, bounded by HOPS_MAX; an empty entry is malformed."""
    entries = value.split(",", HOPS_MAX)
    if len(entries) > HOPS_MAX:
        raise ValueError(f"{header} names more than {HOPS_MAX} hops")
    if any(not entry.strip() for entry in entries):
        raise ValueError(f"{header} has an empty entry: {value!r}")
    return entries


def _forwarded_for(element: str) -> str:
    """The for= parameter of one Forwarded element (RFC 7239), without its quotes."""
    for pair in element.split(";"):
        name, equals, value = pair.partition("=")
        if equals and name.strip().lower() == "for":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    raise ValueError(f"a Forwarded element without for=: {element!r}")


_FORWARDING_HEADERS: tuple[tuple[str, str, Callable[[str], str]], ...] = (
    ("HTTP_FORWARDED", "Forwarded", _forwarded_for),
    ("HTTP_X_FORWARDED_FOR", "X-Forwarded-For", str.strip),
    ("HTTP_X_REAL_IP", "X-Real-IP", str.strip),
)
"""The headers that name the client a proxy forwards for: environ key, name, its address."""


def forwarded_chains(environ: Environ) -> list[list[Address]]:
    """The client chain of each forwarding header present, nearest proxy last.

    Raises ValueError when a header is malformed; [] when the request has none.
    """
    chains = []
    for key, header, address_of in _FORWARDING_HEADERS:
        value = environ.get(key)
        if value is not None:
            chains.append([parse_address(address_of(hop)) for hop in _hops(value, header)])
    return chains


# Who may ask.


def _names(setting: str, values: Iterable[str]) -> list[str]:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{setting} must be a list of networks, not a single {values!r}")
    try:
        names = list(values)
    except TypeError:
        raise TypeError(
            f"{setting} must be a list of networks, not {type(values).__name__}"
        ) from None
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{setting}: {name!r} is not a str network such as '10.0.0.0/8'")
    return names


def _networks(setting: str, names: Iterable[str]) -> tuple[Network, ...]:
    networks = []
    for name in names:
        try:
            networks.append(ipaddress.ip_network(name))
        except ValueError as error:
            raise ValueError(f"{setting}: {name!r} is not a network: {error}") from None
    return tuple(networks)


class AccessRule:
    """Who may read an endpoint: `allow` (client networks, loopback by default), judged through
    the `trusted_proxies` (networks, or "unix" for a proxy on a unix socket).

    - No forwarding header: the peer is the client. A unix socket peer (an empty REMOTE_ADDR)
      is on this host and is always allowed (the socket file's permissions say who may
      connect). A request without REMOTE_ADDR names no peer: refused.
    - A forwarding header (Forwarded, X-Forwarded-For, X-Real-IP) from a peer that is not a
      trusted proxy: refused. A local proxy forwards for anyone, so its requests are not local.
    - From a trusted proxy: each header present is walked from the right past trusted proxies;
      the first other address is the client (all trusted: the leftmost). Every header present
      must name an allowed client, so a header the proxy passes through unchanged cannot vouch
      for a client. A malformed header, or more than HOPS_MAX hops, is refused.
    """

    __slots__ = ("allow", "trusted", "unix_trusted")

    def __init__(
        self, allow: Iterable[str] = DEFAULT_ALLOW, trusted_proxies: Iterable[str] = ()
    ) -> None:
        allowed = _names("allow", allow)
        if UNIX in allowed:
            raise ValueError(
                f"allow: {UNIX!r} is not needed: a unix socket client without forwarding "
                "headers is local and always allowed ('unix' belongs in trusted_proxies)"
            )
        proxies = _names("trusted_proxies", trusted_proxies)
        self.allow = _networks("allow", allowed)
        self.unix_trusted = UNIX in proxies
        self.trusted = _networks("trusted_proxies", [name for name in proxies if name != UNIX])

    def _is_proxy(self, address: Address | None) -> bool:
        if address is None:
            return self.unix_trusted
        return any(address in network for network in self.trusted)

    def _client(self, chain: list[Address]) -> Address:
        for address in reversed(chain):
            if not self._is_proxy(address):
                return address
        return chain[0]

    def _allowed(self, address: Address) -> bool:
        return any(address in network for network in self.allow)

    def allows(self, environ: Environ) -> bool:
        """Whether the client of this request may be answered. A server that does not say who
        the peer is (no REMOTE_ADDR at all) is refused: only an empty REMOTE_ADDR, which a
        server sets for a unix socket peer, is one."""
        remote = environ.get("REMOTE_ADDR")
        if not isinstance(remote, str):
            return False
        try:
            peer = parse_address(remote) if remote else None
            chains = forwarded_chains(environ)
        except ValueError:
            return False
        if not chains:
            return peer is None or self._allowed(peer)
        if not self._is_proxy(peer):
            return False
        return all(self._allowed(self._client(chain)) for chain in chains)


# Which site asks.


def valid_host(host: str) -> bool:
    """Whether a Host header is host[:port] and nothing else, so that it may go into a URL and a
    header line (a server that passes CR/LF on must not let it split a Location header)."""
    return _HOST.fullmatch(host) is not None


def header_safe(text: str) -> bool:
    """Printable ASCII without spaces: a URL part that may be copied into a header line."""
    return text.isascii() and text.isprintable() and " " not in text


def url_origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, with the scheme's default port; None otherwise."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, _DEFAULT_PORTS[parts.scheme] if port is None else port


def own_origin(environ: Environ) -> tuple[str, str, int] | None:
    """This request's own origin: its scheme and Host (SERVER_NAME:SERVER_PORT without one);
    None when the Host is not a host[:port]."""
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST") or (
        f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    )
    if not valid_host(host):
        return None
    return url_origin(f"{scheme}://{host}/")


def same_origin(environ: Environ) -> bool:
    """Whether a state-changing request comes from a page of this server: its Origin (or, when
    it has none, its Referer) is this request's own scheme, host and port. A request with
    neither header is refused: browsers send Origin with every POST, so only a request that
    hides where it comes from lacks both. "Origin: null" (a sandboxed or privacy-hidden page)
    is refused."""
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        origin = environ.get("HTTP_REFERER")
    if not origin:
        return False
    asked = url_origin(origin)
    return asked is not None and asked == own_origin(environ)


# Answers.


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


def forbidden(start_response: StartResponse, method: str) -> list[bytes]:
    """What every endpoint answers a client its AccessRule refuses."""
    return reply(start_response, method, "403 Forbidden", "text/plain", b"403 Forbidden\n")


def client_socket(environ: Environ) -> Any:
    """The client's socket where the server exposes it (gunicorn, raindrops' server), else None."""
    for key in CLIENT_SOCKET_KEYS:
        sock = environ.get(key)
        if hasattr(sock, "fileno"):
            return sock
    return None


def endpoint_settings(
    path: str, allow: Iterable[str], trusted_proxies: Iterable[str] = ()
) -> tuple[str, AccessRule]:
    """Checks where a statistics endpoint is mounted and parses who may read it."""
    if not isinstance(path, str):
        raise TypeError(f"path must be a str starting with '/', not {type(path).__name__}")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', not {path!r}")
    return path, AccessRule(allow, trusted_proxies)


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
    environ: Environ, start_response: StartResponse, rule: AccessRule
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
    if not rule.allows(environ):
        return "", forbidden(start_response, method)
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
