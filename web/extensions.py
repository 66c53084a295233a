"""The Flask extensions the page's modules share: htmx (flask-htmx), bound by create_app.

A module of its own so that a blueprint using it does not import web/app.py, which imports
every blueprint.
"""

from __future__ import annotations

from flask_htmx import HTMX

htmx = HTMX()
