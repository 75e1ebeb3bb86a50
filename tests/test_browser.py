"""report.html in headless Chromium: loads without console errors, every plot decodes.

A copy of the page gets a small probe script that records console errors and, on load, each
image's ``naturalWidth``, into an element that ``--dump-dom`` prints. No network, no driver
download: only the ``chromium`` binary (Debian package ``chromium``); skipped where there is none.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from attnbench.results.report import write_report

DATA = Path(__file__).parent / "data" / "generated"  # made by tests/make_fixtures.py, not measured
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PROBE = """<script>
window.__errors = [];
(function () {
  var original = console.error;
  console.error = function () {
    window.__errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
  window.addEventListener("error", function (e) {
    window.__errors.push("error: " + (e.message || (e.target && e.target.tagName) || "?"));
  }, true);
  window.addEventListener("load", function () {
    var imgs = Array.prototype.slice.call(document.images);
    var out = document.createElement("pre");
    out.id = "__probe";
    out.textContent = JSON.stringify({
      images: imgs.length,
      widths: imgs.map(function (i) { return i.naturalWidth; }),
      broken: imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                  .map(function (i) { return i.alt; }),
      errors: window.__errors
    });
    document.body.appendChild(out);
  });
})();
</script>"""

pytestmark = pytest.mark.browser


def chromium() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = chromium()
    if binary is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            *args,
        ]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "HOME": profile}
        )


def probe(page: Path) -> dict[str, Any]:
    """Load a copy of ``page`` with the probe script and return what it recorded."""
    text = page.read_text(encoding="utf-8")
    copy = page.with_name(f"probe_{page.name}")
    copy.write_text(text.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    done = run_chromium("--virtual-time-budget=5000", "--dump-dom", copy.as_uri())
    start = done.stdout.find('<pre id="__probe">')
    assert start >= 0, f"the probe did not report (rc {done.returncode}): {done.stderr[-2000:]}"
    body = done.stdout[start + len('<pre id="__probe">') : done.stdout.index("</pre>", start)]
    result: dict[str, Any] = json.loads(html.unescape(body))
    return result


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if chromium() is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    out = tmp_path_factory.mktemp("browser_report")
    return write_report([DATA / "sweep"], out)


def test_report_loads_and_every_plot_decodes(report: Path) -> None:
    result = probe(report)
    n_plots = len(list((report.parent / "plots").glob("*.png")))
    assert result["images"] == n_plots > 0
    assert result["broken"] == []
    assert all(w > 100 for w in result["widths"])
    assert result["errors"] == []


def test_probe_sees_a_broken_image_and_an_error(tmp_path: Path) -> None:
    """The check itself can fail: a PNG that does not decode and a console error are both caught."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>t</title></head><body>"
        '<img alt="bad" src="data:image/png;base64,iVBORw0KGgoAAAA=">'
        '<script>console.error("boom")</script></body></html>',
        encoding="utf-8",
    )
    result = probe(page)
    assert result["broken"] == ["bad"]
    assert any("boom" in e for e in result["errors"])


def test_screenshot(report: Path) -> None:
    """A full-page screenshot renders (kept beside the report for a person to look at)."""
    shot = report.parent / "report.png"
    run_chromium("--hide-scrollbars", "--window-size=1400,3000", f"--screenshot={shot}", report.as_uri())
    assert shot.is_file() and shot.stat().st_size > 50_000
