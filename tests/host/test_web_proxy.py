"""Host tests of issue 22's reverse-proxy point: behind a TLS proxy the page works when the
proxy is trusted (CBLB_TRUSTED_PROXIES) and its host name allowed (CBLB_ALLOWED_HOSTS), and
X-Forwarded-* from any other peer count for nothing."""

from __future__ import annotations

import re

from test_web import TOKEN, make_app, text

# ---- behind a reverse proxy ----------------------------------------------------------------
PROXY = "10.0.0.5"


def proxied(app, peer=PROXY, **headers):
    """A client as a TLS reverse proxy at ``peer`` is to the page: it connects to the
    loopback bind and says where the browser's request came from."""
    c = app.test_client()
    c.environ_base.update(REMOTE_ADDR=peer)
    fwd = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "cblb.example.com",
           "X-Forwarded-For": "192.0.2.7", **headers}
    return c, fwd


def login_through(c, fwd, origin="https://cblb.example.com"):
    page = c.get("/login", headers={"Accept": "text/html", **fwd},
                 base_url="http://127.0.0.1:8470")
    m = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    tok = m.group(1) if m else ""
    return page, c.post("/login", data={"token": TOKEN, "csrf_token": tok, "next": "/"},
                        headers={"Origin": origin, **fwd}, base_url="http://127.0.0.1:8470")


def test_a_post_through_a_trusted_proxy_succeeds(ctl, caplog):
    import logging

    app = make_app(ctl, CBLB_CHECK_HOST=True, CBLB_ALLOWED_HOSTS=("cblb.example.com",),
                   CBLB_TRUSTED_PROXIES=(PROXY,))
    c, fwd = proxied(app)
    caplog.set_level(logging.INFO, logger="cblb.web")
    page, r = login_through(c, fwd)
    assert page.status_code == 401 and r.status_code == 303
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("cblb_session_8470=") and "Secure" in cookie   # https at the proxy
    assert "peer=192.0.2.7" in caplog.text                                 # the browser
    # an action: POST with Origin and CSRF, as the browser sends it through the proxy
    page = c.get("/", headers={"Accept": "text/html", **fwd}, base_url="http://127.0.0.1:8470")
    tok = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    r = c.post("/snapshots", data={"name": "shadow", "origin": "/dev/vdb1", "csrf_token": tok},
               headers={"Origin": "https://cblb.example.com", **fwd},
               base_url="http://127.0.0.1:8470")
    assert r.status_code == 303 and ctl.snapshot("shadow")


def test_the_same_post_without_the_flags_is_refused(ctl):
    app = make_app(ctl, CBLB_CHECK_HOST=True)          # today's loopback bind
    # a proxy that sends its own Host (127.0.0.1:8470): the browser's Origin differs
    c, fwd = proxied(app, peer="127.0.0.1")
    page, r = login_through(c, fwd)
    assert page.status_code == 401 and r.status_code == 403 and "Origin" in text(r)
    # a proxy that passes the browser's Host on: refused as a foreign Host
    c, fwd = proxied(app, peer="127.0.0.1")
    page = c.get("/login", headers={"Accept": "text/html", **fwd},
                 base_url="http://cblb.example.com")
    assert page.status_code == 400 and "unexpected Host" in text(page)
    # with the proxy trusted but the name not allowed: still a foreign Host
    app = make_app(ctl, CBLB_CHECK_HOST=True, CBLB_TRUSTED_PROXIES=("127.0.0.1",))
    c, fwd = proxied(app, peer="127.0.0.1")
    page, r = login_through(c, fwd)
    assert page.status_code == 400 and r.status_code == 400


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(ctl, caplog):
    import logging

    app = make_app(ctl, CBLB_CHECK_HOST=True, CBLB_ALLOWED_HOSTS=("cblb.example.com",),
                   CBLB_TRUSTED_PROXIES=(PROXY,))
    caplog.set_level(logging.INFO, logger="cblb.web")
    c, fwd = proxied(app, peer="10.0.0.66")           # not the proxy
    page, r = login_through(c, fwd)
    assert r.status_code == 403                       # its X-Forwarded-Host counts for nothing
    page, r = login_through(c, fwd, origin="http://127.0.0.1:8470")
    assert r.status_code == 303
    assert "Secure" not in r.headers["Set-Cookie"]    # its X-Forwarded-Proto neither
    assert "peer=10.0.0.66" in caplog.text and "192.0.2.7" not in caplog.text


def test_a_forwarded_host_not_allowed_is_refused(ctl):
    app = make_app(ctl, CBLB_CHECK_HOST=True, CBLB_ALLOWED_HOSTS=("cblb.example.com",),
                   CBLB_TRUSTED_PROXIES=(PROXY,))
    c, fwd = proxied(app, **{"X-Forwarded-Host": "evil.example"})
    page, _ = login_through(c, fwd, origin="https://evil.example")
    assert page.status_code == 400 and "unexpected Host" in text(page)
