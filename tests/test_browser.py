"""A real browser: `dvc plots show` on the tiny finished pipeline, opened in headless Chromium.

Every plot declared under the top-level `plots:` of dvc.yaml must be on the page and drawn: each vega plot's
div holds an <svg> or a non-blank <canvas>, each image plot's <img> has loaded, and the browser console has
no SEVERE entry. A full-page screenshot is saved to test-artifacts/ (git-ignored) and to pytest's tmp dir.

There is no network in CI, so the page must not load vega from the CDN that DVC's default HTML points at:
the test fills its own `--html-template` whose script tags load local copies of the exact versions DVC asks
for (vega 5.20.2, vega-lite 5.2.0, vega-embed 6.18.2).

Prerequisites, all installed by `.ci/browser-prereqs` (run by `.ci/run`):
  - Chromium:     $STEELDEFECT_CHROMIUM     or `chromium` on PATH      (Debian package chromium)
  - chromedriver: $STEELDEFECT_CHROMEDRIVER or `chromedriver` on PATH  (Debian package chromium-driver)
  - vega builds:  $STEELDEFECT_VEGA_DIR     or .ci/vendor/vega         (from the npm registry)
  - selenium (requirements.txt).
A missing one skips the test, except with CI=true, where it fails it: CI must never skip it silently.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import REPO, run

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # reported by the `browser` fixture: a skip, or a failure under CI=true
    webdriver = None

pytestmark = pytest.mark.slow

VEGA_FILES = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")  # in the order they must load
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".gif", ".png", ".svg"}  # dvc_render.image.ImageRenderer.EXTENSIONS
RENDER_TIMEOUT = 30  # seconds
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--window-size=1400,1000",
]


def missing(what: str) -> None:
    """Skip for a missing prerequisite; under CI=true fail instead."""
    reason = f"{what} (run `bash .ci/browser-prereqs` to install the browser test's prerequisites)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI=true and a browser test prerequisite is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def find_program(env: str, name: str) -> Path:
    given = os.environ.get(env)
    found = given or shutil.which(name)
    if not found or not Path(found).is_file() or not os.access(found, os.X_OK):
        missing(f"{name} not found (${env}={given!r}, PATH lookup: {shutil.which(name)!r})")
    return Path(found)


@pytest.fixture(scope="session")
def browser() -> dict[str, Path]:
    """Where Chromium, chromedriver and the vega builds are; checked before the (slow) `pipeline` fixture."""
    if webdriver is None:
        missing("selenium is not installed")
    paths = {
        "chromium": find_program("STEELDEFECT_CHROMIUM", "chromium"),
        "chromedriver": find_program("STEELDEFECT_CHROMEDRIVER", "chromedriver"),
    }
    vega_dir = Path(os.environ.get("STEELDEFECT_VEGA_DIR") or REPO / ".ci" / "vendor" / "vega")
    absent = [name for name in VEGA_FILES if not (vega_dir / name).is_file()]
    if absent:
        missing(f"vega builds {absent} not found in {vega_dir}")
    paths["vega_dir"] = vega_dir.resolve()
    return paths


def declared_plots(root: Path) -> tuple[list[str], list[str]]:
    """The top-level `plots:` of dvc.yaml as (vega plot names, image paths)."""
    vega, images = [], []
    for entry in yaml.safe_load((root / "dvc.yaml").read_text())["plots"]:
        name = entry if isinstance(entry, str) else next(iter(entry))
        (images if Path(name).suffix.lower() in IMAGE_SUFFIXES else vega).append(name)
    return vega, images


def div_id(name: str) -> str:
    """The id DVC gives a plot's div (dvc_render.base.Renderer.remove_special_chars)."""
    return name.translate({ord(c): "_" for c in r"!@#$%^&*()[]{};,<>?\/:.|`~=_+ "})


def plots_page(pipeline: Path, vega_dir: Path, out: Path) -> Path:
    """`dvc plots show` with a template loading the local vega builds instead of DVC's CDN `{scripts}`."""
    scripts = "\n".join(f'  <script src="{(vega_dir / name).as_uri()}"></script>' for name in VEGA_FILES)
    template = out.parent / "template.html"
    template.write_text(
        "<!DOCTYPE html>\n<html>\n<head>\n  <meta charset='utf-8'>\n  <title>DVC Plot</title>\n"
        f"{scripts}\n  <style>table {{ border-spacing: 15px; }}</style>\n</head>\n"
        "<body>\n{plot_divs}\n</body>\n</html>\n"
    )
    run(["dvc", "plots", "show", "--html-template", str(template), "-o", str(out)], pipeline)
    page = out / "index.html"
    html = page.read_text()
    assert "cdn.jsdelivr.net" not in html and "https://" not in html.split("<body>")[0]
    return page


# Per vega div: what it holds once vega-embed has drawn it; a canvas counts only if some pixel is painted.
PLOT_STATE_JS = """
return arguments[0].map(function (id) {
  var div = document.getElementById(id);
  if (!div) return [id, 'no div'];
  var svg = div.querySelector('svg');
  if (svg) return [id, svg.querySelectorAll('path, rect, line, circle, text').length ? 'svg' : 'empty svg'];
  var canvas = div.querySelector('canvas');
  if (!canvas) return [id, 'not rendered'];
  if (!canvas.width || !canvas.height) return [id, 'empty canvas'];
  var px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  var painted = 0;
  for (var i = 3; i < px.length; i += 4) if (px[i] > 0) painted++;
  return [id, painted > 100 ? 'canvas' : 'blank canvas'];
});
"""

IMAGE_STATE_JS = """
return arguments[0].map(function (id) {
  var div = document.getElementById(id);
  if (!div) return [id, 'no div', 0];
  var imgs = Array.from(div.querySelectorAll('img'));
  if (!imgs.length) return [id, 'no img', 0];
  var bad = imgs.filter(function (img) { return !img.complete || img.naturalWidth === 0; });
  return [id, bad.length ? 'not loaded: ' + bad.map(function (i) { return i.src; }).join(' ') : 'img',
          Math.min.apply(null, imgs.map(function (i) { return i.naturalWidth; }))];
});
"""


def full_page_png(driver) -> bytes:
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    return base64.b64decode(shot["data"])


def test_every_declared_plot_renders_in_chromium(browser, pipeline, tmp_path, monkeypatch):
    vega_plots, image_plots = declared_plots(pipeline)
    # the localization plot has data only with train.supervision: mask (the pipeline here is the default image
    # model: its CSV holds only the header), and DVC draws no plot without data
    # and the per-type curves only with train.target: classes (test_pipeline_classes shows them)
    vega_plots = [
        name for name in vega_plots if not name.startswith(("Localization (mask models)", "plots/classes_"))
    ]
    assert vega_plots and image_plots, "dvc.yaml declares no vega or no image plots"
    page = plots_page(pipeline, browser["vega_dir"], tmp_path / "plots")

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager must never try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser["chromium"])
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(browser["chromedriver"])), options=options)
    try:
        driver.get(page.as_uri())
        vega_ids = [div_id(name) for name in vega_plots]
        image_ids = [div_id(name) for name in image_plots]

        def drawn(d):
            states = d.execute_script(PLOT_STATE_JS, vega_ids) + d.execute_script(IMAGE_STATE_JS, image_ids)
            return all(state[1] in ("svg", "canvas", "img") for state in states)

        try:
            WebDriverWait(driver, RENDER_TIMEOUT, poll_frequency=0.25).until(drawn)
        except TimeoutException:
            pass  # the assertions below say which plot is not drawn; the screenshot shows it
        plot_states = dict(driver.execute_script(PLOT_STATE_JS, vega_ids))
        image_states = {id_: (state, width) for id_, state, width in driver.execute_script(IMAGE_STATE_JS, image_ids)}
        console = driver.get_log("browser")

        png = full_page_png(driver)
        for folder in (ARTIFACTS, tmp_path):
            folder.mkdir(exist_ok=True)
            (folder / "browser-plots.png").write_bytes(png)
    finally:
        driver.quit()

    assert png.startswith(b"\x89PNG")
    not_drawn = {name: state for name in vega_plots if (state := plot_states[div_id(name)]) not in ("svg", "canvas")}
    assert not not_drawn, f"vega plots not drawn within {RENDER_TIMEOUT} s: {not_drawn}"
    not_loaded = {name: state for name in image_plots if (state := image_states[div_id(name)])[0] != "img"}
    assert not not_loaded, f"image plots not loaded: {not_loaded}"
    assert all(image_states[div_id(name)][1] > 0 for name in image_plots)  # naturalWidth of every <img>
    severe = [entry for entry in console if entry["level"] == "SEVERE"]
    assert not severe, f"browser console errors: {severe}"
