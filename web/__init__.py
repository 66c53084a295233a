"""The browser control page for cblb: Flask rendered on the server, htmx in the browser.

``create_app(test_config=None)`` builds the application. Blueprints, one per concern:

- ``auth``      access token (on every bind), login form, CSRF and Host checks, the
                 /metrics token, the failed-login bucket, the audit log (web/auth.py);
                 sessions are held by the server (web/sessions.py)
- ``devices``   the page, the live devices table, /api/status and the SSE stream
- ``lifecycle`` load / create / start / start as a set / mount / unmount / remove, each a POST
- ``charts``    origin throughput and latency, temp-file growth, as inline SVG partials
- ``metrics``   /metrics in the Prometheus text format

Everything that touches the kernel goes through ``app.config["CBLB_CONTROLLER"]``, a
:class:`cblb.control.Controller`; tests and ``cblb web --standin`` give it a
:class:`cblb.fake.FakeSystem`, so the page always runs the control library's own rules. The
page's own rules (where it mounts, where it keeps temp files) are in cblb/folders.py.

Threat model (README, "The web page"): a local user reaches the port but not the token
(root-only file, refused if anyone else could read it), not a session (ids in root's
memory, cookie ``cblb_session_PORT`` HttpOnly/SameSite=Strict), not a folder the page uses
(cblb/folders.py: every folder from / owned by root, no symlinks), not the other loopback
address (both are bound); they can guess tokens at one a second. A network user gets the
same, with TLS on every bind that is not loopback (web/tls.py: the administrator's
certificate or a self-signed one; ``--no-tls`` warns) or behind a trusted TLS proxy
(web/proxy.py). A cookie thief can
act as the administrator until that session ends (logout, token rotation, idle timeout,
8 hours), never learn the token or keep the session past its end.

Settings for the page (``create_app({...})``, set by ``cblb web`` from its options):

- ``CBLB_TOKEN`` or ``CBLB_TOKEN_FILE``: the access token, or the file holding it (read
  again whenever it changes); one of them is required
- ``CBLB_CHECK_HOST``: answer only to loopback Host names (``cblb web`` sets it when bound
  to loopback, or given ``--allowed-host``); ``CBLB_ALLOWED_HOSTS`` adds names
- ``CBLB_TRUSTED_PROXIES``: the reverse proxies whose ``X-Forwarded-For/-Proto/-Host`` the
  page believes (web/proxy.py); from anyone else those headers are dropped
- ``CBLB_CATALOG_ROOTS``: the folders temp files may go in (default /var/lib/cblb)
- ``CBLB_MOUNT_ROOTS``: the folders snapshots may be mounted under
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The page (web/app.py, imported on first use: `cblb` loads web/command.py on every run)."""
    from .app import create_app as make

    return make(test_config)
