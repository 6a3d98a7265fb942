"""Where an API key may go: the one rule shared by every client of an HTTP endpoint (LLM judge, Qdrant server).

A key is sent over https, or over plain http only to this machine (loopback): a key in clear text on a
network is leaked. The callers say what the key is and how to fix a refusal; the rule lives here only.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

from ragqa.errors import RagqaError


def is_loopback(host: str) -> bool:
    """Whether a URL's host is this machine (API keys may go there over plain http)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_http_url(url: str, option: str, example: str) -> urllib.parse.SplitResult:
    """`url` split, or a one-line error naming `option` unless it is an http(s) URL with a host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RagqaError(f"{option} {url!r} is not an http(s) URL: give one like {example}")
    return parts


def check_key_transport(url: str, *, refusing: str, fix: str) -> None:
    """Raise unless a key may be sent to `url`: over https, or over http to loopback.

    The error reads "{refusing} in clear text to HOST over http; {fix}".
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "https" and not is_loopback(host):
        raise RagqaError(f"{refusing} in clear text to {host} over http; {fix}")
