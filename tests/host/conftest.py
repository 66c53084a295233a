"""Host tests never write the real self-signed certificate folder (/etc/cblb/web-tls)."""

from __future__ import annotations

import pytest

from web import command as web_cmd


@pytest.fixture(autouse=True)
def _tls_dir_in_tmp(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(web_cmd, "DEFAULT_TLS_DIR", str(tmp_path_factory.mktemp("web-tls") / "d"))
