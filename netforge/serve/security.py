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
