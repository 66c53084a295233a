"""Fixtures shared by the host tests.

- ``fake``: the fake module and machine (cblb/fake/) in a temporary folder, the module
  loaded with 4 slots; a test file needing other options defines its own ``fake``, and
  ``ctl`` then drives that one.
- ``ctl``: the real control library over ``fake``.
- Host tests never write the real self-signed certificate folder (/etc/cblb/web-tls).
"""

from __future__ import annotations

import pytest

from cblb.control import Controller
from cblb.fake import FakeSystem
from web import command as web_cmd


@pytest.fixture
def fake(tmp_path):
    return FakeSystem(tmp_path / "fake", loaded=True, total=4)


@pytest.fixture
def ctl(fake):
    return Controller(system=fake)


@pytest.fixture(autouse=True)
def _tls_dir_in_tmp(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(web_cmd, "DEFAULT_TLS_DIR", str(tmp_path_factory.mktemp("web-tls") / "d"))
