"""Who may reach the server: loopback by default; any other address needs a token."""

from __future__ import annotations

import ipaddress
import secrets

from netforge.errors import ConfigError

TOKEN_COOKIE = "netforge_token"
GENERATE = "generate"


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_token(host: str, token: str | None) -> str | None:
    """The token to require (None: none needed), or ConfigError for an unprotected bind.

    ``token == "generate"`` makes a random one (the caller prints it).
    """
    if token == GENERATE:
        token = secrets.token_urlsafe(24)
    if token is not None and len(token) < 8:
        raise ConfigError("--token must be at least 8 characters (or --token generate)")
    if token is None and not is_loopback(host):
        raise ConfigError(f"binding {host} makes the server reachable from other machines; "
                          "give --token SECRET (or --token generate) to require a token")
    return token


def request_token(headers, query, cookies) -> str | None:
    """The token a request carries: Authorization: Bearer, ?token=, or the cookie."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return query.get("token") or cookies.get(TOKEN_COOKIE)


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())


def host_name(netloc: str) -> str:
    """``host`` of ``host:port`` / ``[v6]:port``."""
    if netloc.startswith("["):
        return netloc[1:].split("]", 1)[0]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def foreign_request(method: str, host: str, origin: str | None, loopback_only: bool) -> str | None:
    """Why a request must be refused, or None. A web page elsewhere can make the user's
    browser send requests to a loopback server: a cross-site form post (its Origin is not
    this server) or, through DNS rebinding, requests under a foreign Host name."""
    if loopback_only and not is_loopback(host_name(host)):
        return f'requests must address this server by a loopback name, not "{host}"'
    if method not in ("GET", "HEAD", "OPTIONS") and origin and origin != "null":
        netloc = origin.split("://", 1)[-1].rstrip("/")
        if netloc != host:
            return f"a request from another site ({origin}) was refused"
    return None
