"""Who may talk to the viewer: the bind address rule and the ``Host`` header check.

The viewer shows prompts, completions and tool results, so by default it listens on loopback
only; anything else needs an explicit flag and gets a warning. Loopback alone is not enough:
a web page on the internet can make the browser resolve its own domain name to 127.0.0.1
(DNS rebinding) and then read the viewer as same-origin. Such a request carries that domain
in its ``Host`` header, so the server answers only requests whose ``Host`` is an address
literal it is reachable at (or ``localhost`` for a loopback bind), with its own port.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Optional, Tuple

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost",)
WILDCARDS = ("0.0.0.0", "::")


def is_loopback(host: str) -> bool:
    """True for a loopback address literal or ``localhost``."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    address = _address(host)
    return address is not None and address.is_loopback


def _address(text: str) -> Optional[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def split_host_header(value: str) -> Optional[Tuple[str, int]]:
    """``(host, port)`` of a ``Host`` header value, or None when it has no valid port (a
    browser always sends the port of a non-default one, and the viewer never runs on 80)."""
    value = value.strip()
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        if end < 0 or value[end + 1 : end + 2] != ":":
            return None
        host, port_text = value[1:end], value[end + 2 :]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or ":" in host:
            return None
    if not port_text.isdigit() or not host:
        return None
    return host.lower(), int(port_text)


def host_allowed(header: Optional[str], bound: str, port: int) -> bool:
    """Whether a request with this ``Host`` header may be answered by a server bound to
    ``bound``:``port``. Only address literals (never a domain name, which is what DNS
    rebinding needs) and, on loopback, ``localhost``."""
    if not header:
        return False
    parsed = split_host_header(header)
    if parsed is None or parsed[1] != port:
        return False
    name = parsed[0]
    address = _address(name)
    if bound in WILDCARDS:
        return address is not None
    if is_loopback(bound):
        return name in LOOPBACK_NAMES or (address is not None and address.is_loopback)
    return address is not None and address == _address(bound)
