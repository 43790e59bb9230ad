"""The Ray dashboard, seen in a real browser (headless Chromium) the way a user sees it: a run
submitted as a job to a local head with token authentication (Ray 2.60), the dashboard's token
dialog answered by typing the token from ~/.ray/auth_token, then the Actors view (the distrl-*
actors and their state) and the job's page (its driver log with the step lines), screenshotted.

The screenshots go to tmp_path, or to $DISTRL_SCREENSHOTS (the README's docs/ images were made
with DISTRL_SCREENSHOTS=docs). Without Debian's chromium the test is skipped, unless
DISTRL_REQUIRE_BROWSER is set (CI sets it and installs chromium: .ci/run)."""

import os
import re
import time

import pytest

from tests.browser import CHROMIUM, Browser
from tests.test_jobs import head, ray_cli, submit  # noqa: F401 (head is a fixture)
from tests.test_system import tiny_run_args

DASHBOARD = "http://127.0.0.1:8265"
pytestmark = [pytest.mark.alone,  # the head of tests/test_jobs.py, on the dashboard's default port
              pytest.mark.skipif(not CHROMIUM and not os.environ.get("DISTRL_REQUIRE_BROWSER"),
                                 reason="Debian's chromium is not installed (apt-get install chromium)")]


def _wait_for_steps(job: str, steps: int, timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while True:
        logs = ray_cli("job", "logs", job).stdout
        if re.search(rf"step {steps}/500 \|", logs):
            return logs
        assert time.time() < deadline, f"no step {steps} line in the job's logs:\n{logs[-2000:]}"
        time.sleep(2)


def test_the_dashboard_shows_the_actors_and_the_step_lines_in_a_browser(head, tiny_model_dir, tmp_path):  # noqa: F811
    assert CHROMIUM, "DISTRL_REQUIRE_BROWSER is set but chromium is not installed (apt-get install chromium)"
    out = os.environ.get("DISTRL_SCREENSHOTS") or str(tmp_path)
    os.makedirs(out, exist_ok=True)
    job = submit(*tiny_run_args(tiny_model_dir, "--max_steps", "500", "--output_dir", str(tmp_path),
                                "--run_name", "dashboard"))
    browser = None
    try:
        _wait_for_steps(job, 2)
        with open(os.path.expanduser("~/.ray/auth_token")) as f:
            token = f.read().strip()
        browser = Browser()
        browser.open(f"{DASHBOARD}/#/actors")
        # Token authentication: the dashboard asks for the token, as it asks a user.
        browser.wait_for_text("Authentication Token Required")
        browser.screenshot(os.path.join(out, "dashboard-token.png"))
        browser.evaluate("document.querySelector('input[type=password]').focus()")
        browser.type_text(token)
        clicked = browser.evaluate("(() => { const b = [...document.querySelectorAll('button')].find("
                                   "b => b.textContent.trim().toLowerCase() === 'submit'); "
                                   "if (b) setTimeout(() => b.click(), 100); return !!b; })()")  # it reloads the page
        assert clicked, "no Submit button in the token dialog"
        text = browser.wait_for_text("distrl-learner", "distrl-generator-0", "distrl-generator-1", "ALIVE")
        assert "Authentication Token Required" not in text
        time.sleep(2)  # let the table settle before the picture
        browser.screenshot(os.path.join(out, "dashboard-actors.png"))

        browser.open(f"{DASHBOARD}/#/jobs/{job}")
        deadline = time.time() + 120
        while not re.search(r"step \d+/500 \| reward", browser.text()):  # the Driver log tab
            assert time.time() < deadline, browser.text()[-2000:]
            time.sleep(1)
        # A taller page, so the picture reaches the Logs section under the job's details.
        browser.call("Emulation.setDeviceMetricsOverride", width=1400, height=1500, deviceScaleFactor=1, mobile=False)
        time.sleep(2)
        browser.screenshot(os.path.join(out, "dashboard-job-logs.png"))
    finally:
        if browser is not None:
            browser.close()
        ray_cli("job", "stop", job)
    for name in ("dashboard-token.png", "dashboard-actors.png", "dashboard-job-logs.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
