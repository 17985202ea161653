"""The dashboard in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
plots render and update while the board is fed.

Set ONLINE_GIM_UPDATE_SCREENSHOT=1 to also write the screenshot to docs/dashboard.png (the README's).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from service_support import running_service

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HEADLESS_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000",
)
PLOTS = ("plot-loss", "plot-drift", "plot-probes", "plot-rtf", "plot-pca")

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="Debian's chromium and chromium-driver are needed (scripts/install-system-deps.sh)",
)


def start_browser():
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager try to download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in HEADLESS_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def wait_for(driver, script: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = driver.execute_script(script)
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


def painted_pixels(driver, canvas_id: str) -> int:
    return driver.execute_script(
        """const c = document.getElementById(arguments[0]);
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
           let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
           return n;""",
        canvas_id,
    )


def points(driver) -> dict[str, int]:
    return {p: int(driver.execute_script(f"return document.getElementById('{p}').dataset.points || '0'")) for p in PLOTS}


@pytest.mark.slow
def test_dashboard_plots_render_and_update(tmp_path: Path):
    with running_service(windows=8, feed_period=0.25, token="tok") as (handle, _):
        driver = start_browser()
        try:
            driver.get(handle.url + "/?token=tok")
            wait_for(driver, "return Number(document.body.dataset.events || 0) >= 2")
            wait_for(driver, "return Number(document.getElementById('plot-pca').dataset.points || 0) > 0")
            first = points(driver)
            assert all(n > 0 for n in first.values()), first
            for plot in PLOTS:
                assert painted_pixels(driver, plot) > 500, plot
            time.sleep(1.5)  # several more windows arrive
            second = points(driver)
            for plot in ("plot-loss", "plot-probes", "plot-rtf", "plot-drift"):
                assert second[plot] > first[plot], (plot, first, second)
            assert driver.find_element("id", "phones").text.split()[0] == "sil"
            assert len(driver.find_elements("css selector", "#speakers .row")) == 3
            assert driver.find_element("id", "pill-ready").text == "learning"
            assert "spk" in driver.find_element("id", "legend-pca").text
            assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            shot = tmp_path / "dashboard.png"
            driver.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
            if os.environ.get("ONLINE_GIM_UPDATE_SCREENSHOT") == "1":
                target = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
                target.parent.mkdir(exist_ok=True)
                shutil.copyfile(shot, target)
        finally:
            driver.quit()
