"""The studio in Debian's chromium (Selenium with Debian's chromedriver; nothing downloaded):
every page loads without a script error, the loss chart is drawn, a chat message gets two
answers streamed side by side, a log opens. Screenshots go to $TEST_OUTPUT_DIR (default: the
test's tmp folder). Skipped without chromium and chromedriver, unless CI is set.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from test_studio_api import workdir  # noqa: F401  (the smoke run's working directory)
from workflow_scripts.studio.app import PAGES, StudioSettings, create_app
from workflow_scripts.studio.background import BackgroundServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WAIT_S = 90


@pytest.fixture(scope="module")
def server(workdir):  # noqa: F811
    app = create_app(StudioSettings(config=workdir / "config.yaml", workdir=workdir))
    with BackgroundServer(app) as running:
        yield running


def start_chromium(window: str = "1400,1000"):
    """Debian's headless chromium through its chromedriver (skipped without them, failed in
    CI); the browser's console log is kept."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = "needs Debian's chromium and chromium-driver (envs/apt-test-packages.txt)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={window}", "--no-first-run", "--disable-background-networking"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("TEST_OUTPUT_DIR") or tmp_path_factory.mktemp("studio-shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_for(browser, script: str, timeout: float = WAIT_S):
    """Poll a JavaScript expression until it is truthy; return its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.2).until(
        lambda d: d.execute_script(f"return ({script});"))


def script_errors(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_loads_without_errors(browser, server, shots, page):
    catalog = server.app.state.catalog
    experiments, datasets = len(catalog.experiments), len(catalog.datasets)
    browser.get(f"{server.url}/{page}")
    wait_for(browser, "document.readyState === 'complete'")
    wait_for(browser, "document.querySelector('nav a.active') !== null")
    ready = {"experiments": f"document.querySelectorAll('#experiments tbody tr').length === {experiments}",
             "data": f"document.querySelectorAll('.card.dataset').length === {datasets}",
             "logs": "document.querySelectorAll('#log-list li').length > 5",
             "chat": f"document.querySelectorAll('.chat-adapter').length === {experiments}",
             "compare": "!document.querySelector('#picker').hidden",
             "live": "document.querySelector('#live-clock').textContent.includes('updated')",
             "report": "document.querySelector('#report-frame').contentDocument.body.innerText.length > 100"}
    wait_for(browser, ready[page])
    assert not browser.find_elements("id", "page-error")
    assert script_errors(browser) == []
    browser.save_screenshot(str(shots / f"studio_{page}.png"))


def test_experiments_fit_1280_px_and_columns_can_be_chosen(browser, server, shots):
    rows = len(server.app.state.catalog.experiments)
    browser.set_window_size(1280, 900)
    try:
        browser.get(f"{server.url}/experiments")
        wait_for(browser, f"document.querySelectorAll('#experiments tbody tr').length === {rows}")
        width = browser.execute_script("return [document.documentElement.scrollWidth, "
                                       "document.documentElement.clientWidth];")
        assert width[0] <= width[1], width
        steps = browser.execute_script("return [...document.querySelectorAll('#experiments tbody tr')]"
                                       ".map((tr) => tr.children[9].textContent);")
        assert steps and not any("-1" in s for s in steps), steps
        columns = "document.querySelectorAll('#experiments thead th').length"
        before = browser.execute_script(f"return {columns};")
        browser.execute_script("document.querySelector('#columns').open = true;"
                               "document.querySelector('#columns input[data-key=tokens_per_s]').click();")
        wait_for(browser, f"{columns} === {before - 1}")
        browser.save_screenshot(str(shots / "studio_experiments_1280.png"))
        browser.execute_script("localStorage.removeItem('studio.hiddenColumns');")
    finally:
        browser.set_window_size(1400, 1000)


def test_compare_draws_the_loss_chart(browser, server, shots):
    browser.get(f"{server.url}/compare?e=rank-r2&e=rank-r4&e=lccc-qlora")
    wait_for(browser, "document.querySelector('#loss-chart canvas') !== null")
    drawn = browser.execute_script("""
        const canvas = document.querySelector('#loss-chart canvas');
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let inked = 0;
        for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) inked++;
        return inked;""")
    assert drawn > 2000, "the loss chart canvas is (nearly) empty"
    legend = browser.execute_script(
        "return [...document.querySelectorAll('.u-legend .u-series')].map(e => e.innerText)")
    assert any("rank-r2 train" in s for s in legend) and any("lccc-qlora eval" in s for s in legend)
    diff = browser.find_element("id", "config-diff").text
    assert "lora.r" in diff and "method" in diff
    # the union of both datasets' test prompts: four each
    assert len(browser.find_elements("css selector", "#predictions tbody tr")) == 8
    browser.save_screenshot(str(shots / "studio_compare_chart.png"))


def test_chat_streams_two_answers_side_by_side(browser, server, shots):
    browser.get(f"{server.url}/chat")
    wait_for(browser, "document.querySelectorAll('.chat-adapter').length > 2")
    browser.find_element("id", "chat-use-base").click()  # only the two adapters
    for box in browser.find_elements("css selector", ".chat-adapter"):
        if box.get_attribute("value") in ("rank-r2", "rank-r4"):
            box.click()
    temperature = browser.find_element("id", "chat-temperature")
    temperature.clear()
    temperature.send_keys("1")
    assert len(browser.find_elements("css selector", ".column")) == 2
    # Count the updates each answer gets: streamed means many, not one at the end.
    browser.execute_script("""
        window.updates = {};
        new MutationObserver((records) => records.forEach((r) => {
          const column = r.target.closest && r.target.closest('.column');
          if (column && r.target.classList.contains('streaming'))
            window.updates[column.dataset.model] = (window.updates[column.dataset.model] || 0) + 1;
        })).observe(document.querySelector('#chat-columns'), {childList: true, subtree: true});""")
    browser.find_element("id", "chat-message").send_keys("你好，请介绍一下你自己")
    browser.find_element("id", "chat-send").click()
    wait_for(browser, "document.querySelectorAll('.msg.assistant.finished').length === 2")
    answers = browser.execute_script("""return [...document.querySelectorAll('.column')].map(c => ({
        model: c.dataset.model, text: c.querySelector('.msg.assistant').innerText,
        error: c.querySelector('.msg.error') !== null}))""")
    assert [a["model"] for a in answers] == ["rank-r2", "rank-r4"]
    assert all(a["text"].strip() and not a["error"] for a in answers), answers
    updates = browser.execute_script("return window.updates")
    assert all(updates.get(m, 0) > 1 for m in ("rank-r2", "rank-r4")), updates
    browser.save_screenshot(str(shots / "studio_chat_answers.png"))


def test_a_log_opens(browser, server, shots):
    browser.get(f"{server.url}/logs")
    wait_for(browser, "document.querySelector('#log-list li[data-name=\"logs/train_adapter/rank-r4.log\"]')")
    browser.find_element("css selector", '#log-list li[data-name="logs/train_adapter/rank-r4.log"]').click()
    wait_for(browser, "document.querySelector('#log-text').textContent.includes('final_loss')")
    assert browser.find_element("id", "log-name").text == "logs/train_adapter/rank-r4.log"
    browser.save_screenshot(str(shots / "studio_log.png"))
    assert script_errors(browser) == []
    shutil.copy(shots / "studio_log.png", shots / "studio_last.png")
