"""Behind a reverse proxy: ``X-Forwarded-*`` honoured from the trusted proxy only.

``CBLB_TRUSTED_PROXIES`` (``cblb web --trusted-proxy ADDR``, an address or a network) names
the proxies whose ``X-Forwarded-For``, ``-Proto`` and ``-Host`` the page believes, one hop
each (werkzeug's ProxyFix with counts of 1, applied only when the connection comes from one
of them). The page then sees the browser's address (logs), scheme (``https``: the session
cookie gets ``Secure``) and host name (the Host and Origin checks compare against it). The
port the session cookie is named after stays the port this server listens on.

From any other peer, and when no proxy is trusted, those headers are removed before the page
sees them: a client cannot claim another address, scheme or host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.middleware.proxy_fix import ProxyFix

FORWARDED = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
             "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_PREFIX", "HTTP_FORWARDED")


def proxy_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address (one proxy) or a network (ADDR/BITS); ValueError otherwise."""
    return ipaddress.ip_network(text.strip().strip("[]"), strict=False)


class TrustedProxies:
    """WSGI layer: ProxyFix for requests from a trusted proxy, forwarded headers stripped
    from everyone else."""

    def __init__(self, app: Callable[..., Any], proxies: Iterable[str]) -> None:
        self.app = app
        self.nets = [proxy_network(p) for p in proxies]
        self.fixed = ProxyFix(self._keep_port, x_for=1, x_proto=1, x_host=1, x_port=0,
                              x_prefix=0)

    def _keep_port(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        orig = environ.get("werkzeug.proxy_fix.orig") or {}
        if orig.get("SERVER_PORT"):
            environ["SERVER_PORT"] = orig["SERVER_PORT"]   # X-Forwarded-Host may carry one
        return self.app(environ, start_response)

    def trusted(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr.strip("[]"))
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in n for n in self.nets)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if self.nets and self.trusted(str(environ.get("REMOTE_ADDR", ""))):
            return self.fixed(environ, start_response)
        for k in FORWARDED:
            environ.pop(k, None)
        return self.app(environ, start_response)
