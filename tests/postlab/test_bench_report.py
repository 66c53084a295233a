"""After the lab session: render report.html on the host from the results.json that the
lab's benchmark test (tests/lab/test_bench_lab.py) wrote, and check what it shows.

scripts/test-all runs this after the last kernel's lab session, with CBLB_BENCH_RESULTS
naming that run's folder. Missing results there are a failure: the lab test ran before."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from markupsafe import escape

from cblb.bench import report


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = os.environ.get("CBLB_BENCH_RESULTS")
    if not src:
        pytest.skip("CBLB_BENCH_RESULTS is not set: scripts/test-all runs this after the lab")
    results = Path(src) / "results.json"
    assert results.exists(), f"{results} missing: the lab's benchmark test did not finish"
    out = tmp_path_factory.mktemp("report")
    shutil.copy(results, out / "results.json")
    report.render_from_json(out / "results.json")
    return out


def test_report_names_kernel_and_machine(rendered: Path) -> None:
    html = (rendered / "report.html").read_text()
    data = json.loads((rendered / "results.json").read_text())
    assert data["meta"]["kernel"]["release"] in html
    assert data["meta"]["machine"]["cpu"] in html
    assert "ratio" in html.lower()


def test_every_figure_in_the_report_exists(rendered: Path) -> None:
    html = (rendered / "report.html").read_text()
    imgs = re.findall(r"src='([^']+\.png)'", html)
    assert "write_throughput.png" in imgs
    for img in imgs:
        assert (rendered / img).stat().st_size > 1000, img


def test_recommendation_and_targets_shown(rendered: Path) -> None:
    html = (rendered / "report.html").read_text()
    data = json.loads((rendered / "results.json").read_text())
    assert data["recommendation"]["text"]
    # the report is a Jinja template with autoescape: markupsafe's escaping, not html's
    for line in data["recommendation"]["text"]:
        assert str(escape(line)) in html
    for t in data["targets"]:
        assert str(escape(t["target"])) in html
