"""A real headless browser (Debian's chromium, driven by Playwright) opens the link that
`harness ui` prints and finds the study's runs table with the trials nested under the
parent run, as a person would see it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import free_port, wait_until_healthy
from tests.test_ui import make_store, start, stop, wait_for_line

#: Playwright cannot download its own browser here; .ci/run installs this one with apt-get
CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
def test_printed_link_opens_the_runs_table_with_trials_under_the_parent(tmp_path, tiny_bert):
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is missing (.ci/run installs Debian's chromium)")
    from playwright.sync_api import expect, sync_playwright

    store = make_store(tmp_path, tiny_bert, name="browse")
    port = free_port()
    log = tmp_path / "ui.log"
    proc = start(["ui", "--port", str(port), "--tracking-uri", f"sqlite:///{store}/mlflow.db"], log)
    try:
        assert wait_until_healthy(f"http://127.0.0.1:{port}", proc, 120), log.read_text()
        link = wait_for_line(log, "runs of browse:", proc).split(": ", 1)[1]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(link)
                _check_runs_table(page, expect, tmp_path / "runs-table.png", _count_runs(store))
            finally:
                browser.close()
    finally:
        stop(proc)


def _count_runs(store: Path) -> int:
    """Runs of the study's experiment: the parent, its trials and its baselines."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("browse")
    return len(client.search_runs([experiment.experiment_id]))


def _check_runs_table(page, expect, screenshot: Path, n_runs: int) -> None:
    """The model-training runs table: the parent run ``browse`` alone until it is
    expanded, then ``trial-0`` and ``trial-1`` indented beneath it."""
    name_cells = page.locator('[role="gridcell"][col-id="attributes.`Run Name`"]')
    parent = name_cells.filter(has=page.get_by_role("link", name="browse", exact=True))
    expect(parent).to_be_visible(timeout=60_000)
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    assert "/runs" in page.url and "workflowType=machine_learning" in page.url
    expect(page.get_by_text(f"{n_runs} matching runs")).to_be_visible()
    trials = [page.get_by_role("link", name=f"trial-{i}", exact=True) for i in (0, 1)]
    for trial in trials:
        expect(trial).to_have_count(0)  # nested: hidden while the parent is collapsed

    parent.get_by_role("button").click()  # the row's expander
    parent_x = parent.get_by_role("link").bounding_box()["x"]
    for trial in trials:
        expect(trial).to_be_visible()
        assert trial.bounding_box()["x"] > parent_x, "a trial is indented under its parent"
    page.screenshot(path=str(screenshot))
