"""Redis URLs as Spin takes them (``redis://`` / ``rediss://``), for the outbound API and the key-value store."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

SCHEMES = ("redis", "rediss")
DEFAULT_PORT = 6379


def parse_redis_url(url: str) -> SplitResult:
    """The URL's parts; ValueError (with the reason) when it cannot name a Redis server."""
    parts = urlsplit(url)
    parts.port  # noqa: B018 - raises ValueError for a bad port
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ValueError("not a redis:// or rediss:// URL with a host")
    return parts


def masked(url: str) -> str:
    """``url`` without its password, for messages and logs (a Redis URL may carry credentials)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "the address"
    if password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()
