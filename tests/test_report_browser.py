"""The rendered HTML report in headless Debian chromium: every image loads, the page draws,
and it fits a 1280-pixel desktop window and a 390-pixel phone window without scrolling sideways.

Skipped without /usr/bin/chromium, unless CI is set (then missing chromium is a failure).
Screenshots are kept in $TEST_OUTPUT_DIR (default: the test's tmp folder).
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib import image
from report_fixtures import build_results, run_pipeline

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]
# Runs after every image has loaded or failed; --dump-dom then shows the verdict: how many
# images loaded, and how far the page reaches past the window (0: no sideways scrolling).
PAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((img) => img.complete && img.naturalWidth > 0);
  document.body.dataset.images = images.length;
  document.body.dataset.loaded = loaded.length;
  document.body.dataset.overflow = document.documentElement.scrollWidth - window.innerWidth;
});
</script>
"""
WIDTHS = {"desktop": 1280, "phone": 390}

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI is set but /usr/bin/chromium is missing (apt-get install chromium)")
        pytest.skip("/usr/bin/chromium is absent: apt-get install --no-install-recommends chromium")
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    build_results(root)
    return run_pipeline(root, resamples=100) / "report" / "training_report.html"


def run_chromium(binary: str, profile: Path, *args: str) -> str:
    result = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args],
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout


def checked_dom(binary: str, html: Path, tmp_path: Path, width: int) -> dict[str, int]:
    checked = tmp_path / f"checked-{width}.html"
    text = html.read_text(encoding="utf-8")
    checked.write_text(text.replace("</body>", PAGE_CHECK + "</body>"), encoding="utf-8")
    dom = run_chromium(binary, tmp_path / f"profile-{width}", "--virtual-time-budget=10000",
                       f"--window-size={width},900", "--dump-dom", checked.as_uri())
    body = re.search(r"<body([^>]*)>", dom).group(1)
    return {key: int(value) for key, value in re.findall(r'data-(\w+)="(-?\d+)"', body)}


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
def test_every_image_loads_and_nothing_scrolls_sideways(chromium, report_html, tmp_path, width):
    found = checked_dom(chromium, report_html, tmp_path, width)
    expected = report_html.read_text(encoding="utf-8").count("<img ")
    assert expected == 6
    assert found["images"] == found["loaded"] == expected
    assert found["overflow"] <= 0, f"the page is {found['overflow']} px wider than {width} px"


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
def test_screenshot_is_drawn(chromium, report_html, tmp_path, record_property, width):
    shot = tmp_path / f"report-{width}.png"
    run_chromium(chromium, tmp_path / "profile", f"--screenshot={shot}",
                 f"--window-size={width},3000", report_html.as_uri())
    pixels = image.imread(shot)
    assert pixels.shape[:2] == (3000, width)
    assert pixels[..., :3].std() > 0.05, "the screenshot is blank"
    keep = Path(os.environ.get("TEST_OUTPUT_DIR", tmp_path))
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / f"report_screenshot_{width}.png")
    record_property("screenshot", str(keep / f"report_screenshot_{width}.png"))
