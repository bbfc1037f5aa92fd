"""Screenshot of the MLflow UI comparing two runs, for docs/tracking.md.

    python scripts/mlflow_screenshot.py --uri http://127.0.0.1:5000 --experiment lora-zh \\
        --runs rank-r2 rank-r4 --out docs/mlflow_compare.png

Debian's headless chromium (/usr/bin/chromium, through /usr/bin/chromedriver) with a fresh
profile, no GPU, no background networking; the server is the one given by --uri.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workflow_scripts.common.cli import parser as cli_parser  # noqa: E402

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--hide-scrollbars")


# Close the assistant panel, fold the plot and run details, show only the params and metrics
# that differ between the two runs.
SHOW_DIFFERENCES = """
const buttons = [...document.querySelectorAll('button')];
const byLabel = label => buttons.find(b => b.getAttribute('aria-label') === label);
for (const label of ['Close', 'Parameters - Show diff only', 'Metrics - Show diff only']) {
  const b = byLabel(label); if (b) b.click();
}
for (const div of document.querySelectorAll('div[role=button]')) {
  if (['Visualizations', 'Run details'].includes(div.innerText.trim())) div.click();
}
"""


def compare_url(uri: str, experiment: str, names: list[str]) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    ids = []
    for name in names:
        runs = client.search_runs([exp.experiment_id], f"tags.`lora_zh.experiment` = '{name}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        ids.append(runs[0].info.run_id)
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([exp.experiment_id])})
    return f"{uri.rstrip('/')}/#/compare-runs?{query}"


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--uri", required=True, help="the MLflow server")
    parser.add_argument("--experiment", default="lora-zh", help="the MLflow experiment")
    parser.add_argument("--runs", nargs=2, required=True, help="the two experiments to compare")
    parser.add_argument("--out", type=Path, default=Path("docs/mlflow_compare.png"), help="the PNG")
    parser.add_argument("--size", default="1400,1100", help="window width,height")
    parser.add_argument("--wait", type=float, default=8.0, help="seconds for the page to draw")
    args = parser.parse_args(argv)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={args.size}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(compare_url(args.uri, args.experiment, args.runs))
        time.sleep(args.wait)
        driver.execute_script(SHOW_DIFFERENCES)
        time.sleep(2)
        driver.save_screenshot(str(args.out))
    finally:
        driver.quit()
    print(args.out, args.out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
