"""`forge serve` in a real browser: Debian's chromium, headless, driven by Playwright, against
the real command (`forge serve --port 0`) over a database seeded by tests/web_seed.py.

Every page loads with status 200, no console error (a script error, a refused stylesheet, a
Content-Security-Policy violation, a missing asset all log one) and no failed request; a run
leads to a candidate and on to its diff; the chart is drawn and its marks are links; a filter
narrows the runs table.

Without chromium (`$FORGE_CHROMIUM`, else `chromium` on the PATH) or the playwright package
these tests skip, unless the `CI` variable is set: then that is a failure (`.ci/browser.sh`
installs chromium). `FORGE_SCREENSHOTS=DIR` saves screenshots of the main pages in DIR (those
of docs/web.md are made so).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from web_seed import seed

CHROMIUM_ENV = "FORGE_CHROMIUM"
SCREENSHOTS_ENV = "FORGE_SCREENSHOTS"
VIEWPORT = {"width": 1280, "height": 860}
SCREENSHOT_HEIGHT = 1500
"""Screenshots of long pages stop here (pixels)."""


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and the browser tests cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("web-browser")
    path = folder / "forge.db"
    seeded = seed(f"sqlite:///{path}", folder / "library")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "forge.cli.main",
            "serve",
            "--db",
            f"sqlite:///{path}",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        found = re.search(r"at (http://\S+)/;", line)
        assert found, line + process.stderr.read()
        yield {"url": found.group(1), "seeded": seeded}
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    executable = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable(f"the playwright package is not installed ({exc})")
    if executable is None:
        unavailable(f"no chromium here (apt-get install chromium, or set {CHROMIUM_ENV})")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


class Tab:
    """A browser page that records what went wrong: console errors, uncaught exceptions, and
    responses with an error status."""

    def __init__(self, browser, base: str) -> None:  # noqa: ANN001 (playwright Browser)
        self.base = base
        self.page = browser.new_page(viewport=VIEWPORT)
        self.problems: list[str] = []
        self.page.on(
            "console",
            lambda m: self.problems.append(f"console {m.text}") if m.type == "error" else None,
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"page error {e}"))
        self.page.on(
            "response",
            lambda r: self.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )

    def open(self, path: str) -> None:
        response = self.page.goto(self.base + path)
        assert response is not None and response.status == 200, (path, response)
        self.page.wait_for_load_state("load")
        assert self.problems == [], (path, self.problems)

    @property
    def path(self) -> str:
        return self.page.url.removeprefix(self.base)

    def rows(self, table: str) -> int:
        return self.page.locator(f"table#{table} tbody tr").count()

    def screenshot(self, name: str) -> None:
        folder = os.environ.get(SCREENSHOTS_ENV)
        if folder:
            height = min(SCREENSHOT_HEIGHT, self.page.evaluate("document.body.scrollHeight"))
            clip = {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height}
            self.page.screenshot(path=str(Path(folder) / f"{name}.png"), clip=clip, full_page=True)


@pytest.fixture
def tab(browser, site) -> Iterator[Tab]:
    opened = Tab(browser, site["url"])
    yield opened
    opened.page.close()


def main_pages(seeded) -> dict[str, str]:  # noqa: ANN001 (web_seed.Seeded)
    best = seeded.candidates["t0r3"]
    return {
        "runs": "/runs",
        "run": f"/runs/{seeded.runs['softmax']}",
        "candidate": f"/candidates/{best}",
        "diff": f"/candidates/{best}/diff",
        "library": "/library",
        "entry": f"/library/{seeded.library_entry}",
        "search": "/search?q=exp2",
        "batches": "/batches",
        "batch": f"/batches/{seeded.batch}",
    }


def test_every_page_loads_cleanly(tab, site):
    seeded = site["seeded"]
    paths = list(main_pages(seeded).values()) + ["/search", "/search?q=norm"]
    paths += [f"/runs/{r}" for r in seeded.runs.values()]
    paths += [f"/candidates/{c}" for c in seeded.candidates.values()]
    for path in paths:
        tab.open(path)
        header = tab.page.eval_on_selector("header.top", "e => getComputedStyle(e).backgroundColor")
        assert header == "rgb(29, 35, 42)", (path, header)  # the stylesheet was applied
    for name, path in main_pages(seeded).items():
        tab.open(path)
        tab.screenshot(name)


def test_from_a_run_to_a_candidate_to_its_diff(tab, site):
    seeded = site["seeded"]
    run, best, parent = seeded.runs["softmax"], seeded.candidates["t0r3"], seeded.candidates["t0r2"]
    tab.open("/runs")
    tab.page.click(f"table#runs a[href='/runs/{run}']")
    tab.page.wait_for_url(f"**/runs/{run}")
    chart = tab.page.locator("figure.chart svg").first
    box = chart.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 150  # drawn, not empty
    assert chart.locator("circle.mark").count() == 7 and chart.locator("line.rule").count() == 3
    assert tab.page.locator("figure.chart").count() == 3  # speedup, tokens, cost
    tab.page.click(f"ul.tree a[href='/candidates/{best}']")
    tab.page.wait_for_url(f"**/candidates/{best}")
    assert "Candidate" in tab.page.inner_text("h1") and tab.page.locator("div.code").count() == 2
    keyword = tab.page.eval_on_selector(".code .kn", "e => getComputedStyle(e).color")
    assert keyword == "rgb(0, 128, 0)", keyword  # `import`, highlighted by code.css
    tab.page.click("#diff-link")
    tab.page.wait_for_url(f"**/candidates/{best}/diff")
    assert f"against candidate {parent}" in tab.page.inner_text("h1")
    changed = tab.page.locator("table#diff tr.replace td.new").first
    assert changed.is_visible() and "inv = 1.0 / tl.sum" in changed.inner_text()
    assert tab.problems == []
    tab.open(f"/runs/{run}")
    tab.page.locator("figure.chart svg a").first.click()  # a chart mark is a link
    tab.page.wait_for_url(re.compile(r".*/candidates/\d+$"))
    assert tab.problems == []


def test_a_filter_narrows_the_runs_table(tab, site):
    tab.open("/runs")
    assert tab.rows("runs") == len(site["seeded"].runs)
    tab.page.select_option("select[name=op]", "rms_norm")
    tab.page.click("form.filters button[type=submit]")
    tab.page.wait_for_url("**/runs?op=rms_norm*")
    assert tab.rows("runs") == 1
    assert tab.page.inner_text("table#runs tbody td:nth-child(2)") == "rms_norm"
    tab.page.select_option("select[name=op]", "")
    tab.page.select_option("select[name=status]", "finished")
    tab.page.click("form.filters button[type=submit]")
    tab.page.wait_for_url("**status=finished*")
    assert tab.rows("runs") == 3
    tab.page.click("table#runs thead a:text('best vs eager')")
    tab.page.wait_for_url("**sort=best*")
    first = tab.page.inner_text("table#runs tbody tr:first-child td:nth-child(8)")
    assert first.startswith("1.93×"), first
    assert tab.problems == []
