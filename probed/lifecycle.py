"""Who may use the lifecycle API (POST /-/reload): not a web page, not a rebound DNS name.

The endpoint is off unless probed runs with --web.enable-lifecycle (as in Prometheus; SIGHUP
always reloads). When on, a request is refused if a browser says it comes from another site
(Origin, Sec-Fetch-Site) or if its Host names something other than this machine: a page on
attacker.example whose name was rebound to 127.0.0.1 still sends `Host: attacker.example`.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from ipaddress import ip_address
from typing import Final
from urllib.parse import urlsplit

from probed.config import split_listen

# Names no public DNS answers for, so no attacker can point them at us.
_PRIVATE_SUFFIXES: Final = (".localhost", ".local", ".internal", ".svc", ".home.arpa", ".lan")


def allowed_hosts(listen: str) -> frozenset[str]:
    """Host names (besides IP addresses and private names) this daemon answers to."""
    names = {"localhost", socket.gethostname().lower()}
    try:
        host, _port = split_listen(listen)
    except ValueError:
        host = ""
    if host:
        names.add(host.lower())
    return frozenset(names)


def host_name(value: str) -> str:
    """The name in a Host header or URL authority: no port, no brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host: str, allowed: frozenset[str]) -> bool:
    name = host_name(host)
    return bool(name) and (
        _is_ip(name) or name in allowed or "." not in name or name.endswith(_PRIVATE_SUFFIXES)
    )


def refusal(headers: Mapping[str, str], allowed: frozenset[str]) -> str | None:
    """Why a lifecycle request must be refused, or None to let it through."""
    host = headers.get("Host", "")
    if not host_allowed(host, allowed):
        return "the Host header does not name this machine (use its address, or SIGHUP)"
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return "a browser sent it from another site"
    origin = headers.get("Origin")
    if origin is not None:
        try:
            netloc = urlsplit(origin).netloc.lower()
        except ValueError:
            netloc = ""
        if netloc != host.strip().lower():
            return "its Origin is not this server"
    return None
