"""Test-only network guard: any attempt to reach a host other than this machine raises, and is logged.

Installed in the pytest process by conftest and, through sitecustomize.py on PYTHONPATH, in every Python
subprocess the tests start (`ragqa ...` runs included), so "offline" is checked, not assumed. Loopback
(127.0.0.0/8, ::1, localhost) and Unix sockets stay allowed: tests run local HTTP servers.
Each blocked attempt is appended to the file named by RAGQA_NETGUARD_LOG (if set): a library that catches the
error and carries on is still caught by the autouse fixture in conftest, which fails the test.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import traceback

_installed = False


class NetworkBlockedError(ConnectionRefusedError):
    """Raised for a non-loopback address (a ConnectionError, so callers see an ordinary network failure)."""


def _is_local(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host is None or host in ("", "localhost", socket.gethostname()) or str(host).endswith(".localhost"):
        return True  # this machine's own name resolves from /etc/hosts, not the network
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False  # a name that would need a DNS lookup
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _is_ip(host) -> bool:
    try:
        ipaddress.ip_address(host.decode() if isinstance(host, bytes) else str(host).split("%")[0])
    except ValueError:
        return False
    return True


def _block(what: str, target) -> None:
    log = os.environ.get("RAGQA_NETGUARD_LOG")
    if log:
        where = "".join(traceback.format_stack(limit=8)[:-2]).replace("\n", " | ")
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"pid {os.getpid()}: {what} {target!r} from {where}\n")
    raise NetworkBlockedError(f"network access blocked in tests: {what} {target!r} (ragqa must work offline)")


def _check_address(sock, address, what: str) -> None:
    if getattr(sock, "family", None) == getattr(socket, "AF_UNIX", object()):
        return
    host = address[0] if isinstance(address, tuple) else address
    if not _is_local(host):
        _block(what, address)


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    connect, connect_ex, sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto
    getaddrinfo = socket.getaddrinfo

    def guarded_connect(self, address):
        _check_address(self, address, "connect to")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        _check_address(self, address, "connect to")
        return connect_ex(self, address)

    def guarded_sendto(self, data, *args):
        _check_address(self, args[-1], "sendto")
        return sendto(self, data, *args)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _is_local(host) and not _is_ip(host):  # an IP literal needs no lookup; its connect is checked
            _block("resolve", host)
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect_ex
    socket.socket.sendto = guarded_sendto
    socket.getaddrinfo = guarded_getaddrinfo
