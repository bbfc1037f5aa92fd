"""The rendered HTML report in headless Debian chromium: every image loads, the page draws.

Skipped without /usr/bin/chromium, unless CI is set (then missing chromium is a failure).
The screenshot is kept in $TEST_OUTPUT_DIR (default: the test's tmp folder).
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib import image
from report_fixtures import build_results, run_pipeline

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Runs after every image has loaded or failed; --dump-dom then shows the verdict.
IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((img) => img.complete && img.naturalWidth > 0);
  document.body.dataset.images = images.length;
  document.body.dataset.loaded = loaded.length;
});
</script>
"""

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
    return run_pipeline(root) / "report" / "training_report.html"


def run_chromium(binary: str, profile: Path, *args: str) -> str:
    result = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args],
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout


def test_every_image_loads(chromium, report_html, tmp_path):
    checked = tmp_path / "checked.html"
    html = report_html.read_text(encoding="utf-8")
    checked.write_text(html.replace("</body>", IMAGE_CHECK + "</body>"), encoding="utf-8")
    dom = run_chromium(chromium, tmp_path / "profile", "--virtual-time-budget=10000",
                       "--dump-dom", checked.as_uri())
    expected = html.count("<img ")
    assert expected == 5
    assert f'data-images="{expected}"' in dom
    assert f'data-loaded="{expected}"' in dom


def test_screenshot_is_drawn(chromium, report_html, tmp_path, record_property):
    shot = tmp_path / "report.png"
    run_chromium(chromium, tmp_path / "profile", f"--screenshot={shot}",
                 "--window-size=1280,4000", report_html.as_uri())
    assert shot.stat().st_size > 50_000
    pixels = image.imread(shot)
    assert pixels.shape[:2] == (4000, 1280)
    assert pixels[..., :3].std() > 0.05, "the screenshot is blank"
    keep = Path(os.environ.get("TEST_OUTPUT_DIR", tmp_path))
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / "report_screenshot.png")
    record_property("screenshot", str(keep / "report_screenshot.png"))
