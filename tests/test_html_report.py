"""The interactive report (report.html): one self-contained file with the tables, the figures
and a per-client view, opened in headless Chromium (Debian's ``chromium``; skipped without it).

Run folders are written by the recorder itself (tests/test_plots_format.py), without Ray."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fedmtl.html_report import HTML_FILE, markdown_to_html
from fedmtl.report import make_report
from tests.helpers import is_png
from tests.test_plots_format import CLIENTS, fabricated_runs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
ERROR = "REPORT-CONSOLE-ERROR"
PROBE = (  # put first in <head>: console errors, uncaught errors and rejected promises, marked
    "<script>(function () { const error = console.error.bind(console);"
    f" console.error = function () {{ error('{ERROR}', ...arguments); }};"
    f" window.addEventListener('error', (e) => error('{ERROR} uncaught', e.message));"
    f" window.addEventListener('unhandledrejection', (e) => error('{ERROR} rejected', String(e.reason)));"
    " })();</script>")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("html")
    return make_report([fabricated_runs(root / "runs")], root / "report", highlight=4)


def test_the_report_writes_one_self_contained_html_file(report):
    page = report["html"]
    assert page == page.parent / HTML_FILE
    text = page.read_text()
    # nothing to fetch: no script or style sheet from elsewhere (plotly.js is inline)
    assert not re.search(r"<script[^>]*\ssrc=", text) and not re.search(r"<link[^>]*\shref=", text)
    markdown = report["report"].read_text()
    tables = markdown.count("\n|---")
    assert tables >= 3 and text.count('<table class="report-table">') == tables
    for label in report["configurations"]:
        assert html.escape(label, quote=False) in text
    assert text.count('class="plotly-graph-div"') == 6  # five figures and the group gaps
    data = json.loads(re.search(r'<script type="application/json" id="client-data">(.*?)</script>', text,
                                re.S)[1])
    assert data["initial"] == 4 and sorted(map(int, data["clients"])) == list(range(CLIENTS))
    never = data["clients"]["0"][0]
    assert never["rounds_trained"] == 0 and never["last_round"] is None and never["test_examples"] == 20
    assert set(never["tasks"]) == {"left"} and set(data["clients"]["1"][0]["tasks"]) == {"left", "right"}
    mean = next(r for r in data["clients"]["4"] if "mean" in r["configuration"])
    assert mean["global"]["left"] == pytest.approx(mean["tasks"]["left"] - 20)


def test_a_client_that_never_trained_shows_no_train_examples_and_says_why(tmp_path):
    from fedmtl.html_report import _notes, client_records, task_metrics
    from tests.test_plots_format import configurations

    found = configurations(fabricated_runs(tmp_path / "runs"))
    notes = _notes(client_records(found, task_metrics(found)), found[0].label)
    assert "– train / 20 test (never trained)" in notes[0] and "?" not in notes[0]
    assert "trained 4 rounds" in notes[4] and "(never trained)" not in notes[4]


def test_the_fairness_plane_has_the_overall_panel_the_png_has(tmp_path):
    from fedmtl.html_report import plane_figure, task_metrics
    from fedmtl.plots import OVERALL
    from tests.test_plots_format import configurations

    found = configurations(fabricated_runs(tmp_path / "runs"))
    assert all(r.summary.get(OVERALL) for c in found for r in c.runs)
    fig = plane_figure(found, task_metrics(found))
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["task 'left'", "task 'right'", "overall (client mean over its tasks)"]
    personal = [t for t in fig.data if t.xaxis == "x3" and "global" not in t.name]
    assert len(personal) == len(found)
    for trace, c in zip(personal, found, strict=True):
        means = [r.summary[OVERALL]["mean"] * 100 for r in c.runs]
        assert trace.x[0] == pytest.approx(sum(means) / len(means))


def test_markdown_tables_headings_and_code_become_html():
    out = markdown_to_html("# fedmtl report\n\nSee `a|b` & **c**.\n\n## Global model\n\n"
                           "| configuration | x |\n|---|---|\n| a=\\|1\\| | <2> |\n\n## Figures\n\n![f](f.png)\n")
    assert "<h1>" not in out and "<h2>Global model</h2>" in out  # the page has its own title
    assert "<code>a|b</code> &amp; <b>c</b>" in out
    assert "<td>a=|1|</td><td>&lt;2&gt;</td>" in out and "f.png" not in out and "Figures" not in out


def _chromium(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", f"--user-data-dir={home}", *args],
        capture_output=True, text=True, timeout=240)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line and (ERROR in line or "Uncaught" in line)]


@needs_chromium
def test_a_console_error_is_seen(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(f"<html><head>{PROBE}</head><body><script>notAFunction();</script></body></html>")
    seen = _chromium("--dump-dom", page.as_uri(), home=tmp_path / "profile")
    assert seen.returncode == 0 and _console_errors(seen.stderr), seen.stderr[-2000:]


@needs_chromium
def test_chromium_renders_the_report_without_console_errors(report, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(report["html"].read_text().replace("<head>", "<head>" + PROBE, 1))
    dom = _chromium("--dump-dom", probe.as_uri(), home=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-3000:]
    assert not _console_errors(dom.stderr), _console_errors(dom.stderr)
    page = dom.stdout
    assert page.count('class="plotly-graph-div') >= 6 and page.count("main-svg") >= 6  # every figure drawn
    assert page.count('<table class="report-table"') >= 4  # the report's tables and the client's
    view = page.split('id="client-view"', 1)[1]
    assert re.search(r'<h3 id="client-title">Client 4: 4 run\(s\) evaluated it</h3>', view)
    rows = re.findall(r"<tr><td>([^<]+)</td><td>(\d+)</td>", view)
    assert len(rows) == 4 and {seed for _, seed in rows} == {"0", "1"}
    shot = tmp_path / "report.png"
    taken = _chromium(f"--screenshot={shot}", "--window-size=1400,2400", probe.as_uri(), home=tmp_path / "profile")
    assert taken.returncode == 0 and not _console_errors(taken.stderr), taken.stderr[-3000:]
    assert is_png(shot) and shot.stat().st_size > 50_000
