"""End to end in a real headless Chromium: `python -m diffguide dashboard` on a free loopback port.

Opens each page, generates from a tiny 2D run, compares guidance, launches and stops a training run,
and checks that no page shows an error or a stack trace. Screenshots go to the test's temporary
folder, and also to $DIFFGUIDE_SCREENSHOTS (e.g. docs/img) when that is set:
    DIFFGUIDE_SCREENSHOTS=docs/img pytest tests/dashboard/test_dashboard_browser.py
Chromium and chromedriver come from Debian (`apt-get install chromium chromium-driver`, which
`make test` runs); without them these tests fail rather than skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from diffguide.dashboard.jobs import JobRegistry, is_our_process
from diffguide.dashboard.safety import RunsFolder
from diffguide.plots.points import write_run_figure
from tests.helpers import copy_runs, shared_runs

pytestmark = pytest.mark.browser  # `make test-fast` leaves these out

CHROMIUM = os.environ.get("DIFFGUIDE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DIFFGUIDE_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = os.environ.get("DIFFGUIDE_SCREENSHOTS")
WAIT = 120  # seconds: the machine may be busy
# the flags Chromium needs on a closed network (no background connections) and in a container
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,1000", "--hide-scrollbars",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_screenshot_runs(out: Path) -> None:
    """Better-looking runs for the documentation's screenshots (only with DIFFGUIDE_SCREENSHOTS set)."""
    from diffguide.config import apply_overrides, load_preset
    from diffguide.train import train

    main = apply_overrides(
        load_preset("tree-edm"),
        ["train.steps=1500", "model.width=128", "model.depth=3", "train.batch_size=1024"],
    )
    train(main, out / "tree-edm", progress=False)
    write_run_figure(out / "tree-edm")  # samples.png, as the train command writes it
    amateur = apply_overrides(
        load_preset("tree-edm"),
        [
            "train.steps=300",
            "model.width=32",
            "model.depth=2",
            "train.batch_size=512",
            "train.ckpt_every=300",
        ],
    )
    amateur.name = "tree-edm-amateur"
    train(amateur, out / "tree-edm-amateur", progress=False)


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """(base URL, runs folder) of a dashboard server started through the real command line."""
    if SCREENSHOTS:
        source = shared_runs(tmp_path_factory, "dashboard-screenshot-runs", train_screenshot_runs)
        main_run = "tree-edm"
    else:
        source = request.getfixturevalue("dashboard_source_runs")
        main_run = "tiny"
    runs = copy_runs(source, tmp_path_factory.mktemp("browser") / "runs")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffguide", "dashboard", "--runs", str(runs), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=runs.parent,  # the pages show the runs folder relative to this: "runs"
        start_new_session=True,  # its own process group: the teardown stops the server and nothing else
    )
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first, first
        deadline = time.time() + WAIT
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "dashboard server exited:\n" + proc.stdout.read()
            assert time.time() < deadline, "dashboard server did not answer its health check"
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}", runs, main_run
    finally:
        registry = JobRegistry(RunsFolder(runs))
        for job in registry.jobs():  # training processes the dashboard started, verified as such
            if is_our_process(job):
                os.kill(job.pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: the browser tests need Debian's chromium and chromium-driver. "
            "Run `make test` (it installs them), or: sudo apt-get install -y chromium chromium-driver"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: run `make test` (it installs it), or pip install selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="diffguide-chromium-")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# page helpers


def by_css(driver, css):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def wait_until(driver, predicate, what: str, timeout: float = WAIT):
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25, ignored_exceptions=[
            StaleElementReferenceException]).until(lambda d: predicate(d))  # fmt: skip
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}; page errors: {page_errors(driver)}") from None


def button(driver, text: str):
    """The visible button labelled `text`, or None (also None while the page redraws it)."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        found = [b for b in by_css(driver, "button") if b.text.strip() == text and b.is_displayed()]
    except StaleElementReferenceException:  # the live job panel redraws every 1.5 s
        return None
    return found[0] if found else None


def click(driver, text: str) -> None:
    """Click the button labelled `text`, retrying while a live-refreshing panel replaces it."""
    from selenium.common.exceptions import StaleElementReferenceException

    def attempt(d):
        found = button(d, text)
        if found is None:
            return False
        try:
            found.click()
        except StaleElementReferenceException:
            return False
        return True

    wait_until(driver, attempt, f"the {text!r} button to be clickable")


def page_errors(driver) -> list[str]:
    """Texts of error boxes, stack traces and dialogs (e.g. Streamlit's "Page not found") on the page."""
    css = '[data-testid="stException"], [data-testid="stAlertContentError"], [role="dialog"]'
    return [e.text for e in by_css(driver, css)]


def page_text(driver) -> str:
    return "\n".join(e.text for e in by_css(driver, '[data-testid="stMain"]'))


def open_page(driver, url: str, ready_button: str | None = None, ready_text: str | None = None):
    driver.get(url)
    if ready_button:
        wait_until(driver, lambda d: button(d, ready_button), f"the {ready_button!r} button on {url}")
    if ready_text:
        wait_until(driver, lambda d: ready_text in page_text(d), f"{ready_text!r} on {url}")
    wait_until(driver, lambda d: not by_css(d, '[data-testid="stStatusWidget"]'), f"{url} to finish running")


def choose(driver, label: str, option: str) -> None:
    """Pick `option` in the select box labelled `label`, as a user does (open the list, click)."""
    from selenium.common.exceptions import StaleElementReferenceException

    combo = f'input[role="combobox"][aria-label="{label}"]'

    def attempt(d):
        try:
            if d.find_elements("css selector", combo)[0].get_attribute("value") == option:
                return True
            options = [o for o in by_css(d, '[role="option"]') if o.text.strip() == option]
            if options:
                options[0].click()
            else:
                by_css(d, combo)[0].click()  # open the list
        except (StaleElementReferenceException, IndexError):
            pass
        return False

    wait_until(driver, attempt, f"{label!r} to show {option!r}")


def type_into(driver, label: str, text: str) -> None:
    """Replace the text of the input labelled `label` and commit it (Tab), as a user does."""
    from selenium.webdriver.common.keys import Keys

    field = by_css(driver, f'input[aria-label="{label}"]')[0]
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(text, Keys.TAB)
    wait_until(driver, lambda d: by_css(d, f'input[aria-label="{label}"]')[0].get_attribute("value") == text,
               f"{label!r} to read {text!r}")  # fmt: skip
    wait_until(driver, lambda d: not by_css(d, '[data-testid="stStatusWidget"]'), "the page to rerun")


def screenshot(driver, tmp_path: Path, name: str, height: int = 1000) -> Path:
    """Screenshot into the test's folder, and into $DIFFGUIDE_SCREENSHOTS as dashboard-NAME.png if set."""
    driver.set_window_size(1400, height)
    time.sleep(0.5)  # let the layout settle after resizing
    path = tmp_path / f"dashboard-{name}.png"
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SCREENSHOTS) / path.name)
    driver.set_window_size(1400, 1000)
    return path


def images_in_main(driver) -> int:
    return len(by_css(driver, '[data-testid="stMain"] [data-testid="stImage"] img'))


# ---------------------------------------------------------------------------------------------
# the tests


def test_generate_page(server, browser, tmp_path):
    url, runs, main_run = server
    open_page(browser, f"{url}/generate", ready_button="Generate")
    choose(browser, "Run", main_run)
    wait_until(
        browser, lambda d: by_css(d, 'input[aria-label="Class"]'), "the class select of a conditional run"
    )
    click(browser, "Generate")
    wait_until(browser, lambda d: images_in_main(d) >= 1, "the samples image")
    wait_until(browser, lambda d: "no guidance" in page_text(d), "the image caption")
    assert button(browser, "Download PNG") is not None
    assert page_errors(browser) == []
    # the same with classifier-free guidance, as in the docs
    choose(browser, "Guidance", "Classifier-free guidance (CFG)")
    click(browser, "Generate")
    wait_until(browser, lambda d: "CFG w=2" in page_text(d), "the CFG samples")
    assert page_errors(browser) == []
    assert screenshot(browser, tmp_path, "generate", 1000).stat().st_size > 10_000


def test_runs_and_compare_pages(server, browser, tmp_path):
    url, runs, main_run = server
    open_page(browser, f"{url}/?run={main_run}", ready_text="TensorBoard")  # Runs is the home page
    wait_until(browser, lambda d: by_css(d, '[data-testid="stDataFrame"]'), "the runs table")
    wait_until(browser, lambda d: images_in_main(d) >= 1, "the run's samples.png")
    # the command is an st.code block, whose highlighter Streamlit loads lazily: it can appear after
    # the text around it (CI once read the page between the two)
    wait_until(browser, lambda d: "tensorboard --logdir" in page_text(d), "the TensorBoard command")
    assert page_errors(browser) == []
    screenshot(browser, tmp_path, "runs", 1100)

    open_page(browser, f"{url}/compare?run={main_run}", ready_button="Compare")
    if not SCREENSHOTS:  # fewer samples and weights: the same code paths, faster
        type_into(browser, "Samples", "500")
        type_into(browser, "Weights", "1, 3")
    click(browser, "Compare")
    wait_until(browser, lambda d: images_in_main(d) >= 3, "three panels side by side")
    captions = ("no guidance", "CFG w=2", "autoguidance w=2")
    wait_until(browser, lambda d: all(c in page_text(d) for c in captions), f"the captions {captions}")
    click(browser, "Run sweep")
    wait_until(browser, lambda d: images_in_main(d) >= 4, "the weight-sweep plot")
    assert page_errors(browser) == []
    screenshot(browser, tmp_path, "compare", 2350)


def test_path_traversal_is_refused_in_the_browser(server, browser):
    url, runs, _ = server
    open_page(browser, f"{url}/generate?run=..%2F..%2Fetc", ready_text="Generate")
    wait_until(browser, lambda d: page_errors(d), "an error message")
    assert any("refused run name '../../etc'" in e for e in page_errors(browser))
    assert not by_css(browser, '[data-testid="stException"]')


def test_train_launch_and_stop(server, browser, tmp_path):
    from diffguide.dashboard.catalog import progress
    from diffguide.train.checkpoint import list_checkpoints

    url, runs, _ = server
    registry = JobRegistry(RunsFolder(runs))
    open_page(browser, f"{url}/train?preset=tiny", ready_button="Launch training")
    type_into(browser, "Run name", "browser-run")
    type_into(browser, "Steps", "1000000")
    wait_until(
        browser, lambda d: "--name browser-run --set train.steps=1000000" in page_text(d), "the command"
    )
    click(browser, "Launch training")
    wait_until(browser, lambda d: "running" in page_text(d), "the job to show as running")
    wait_until(browser, lambda d: progress(runs / "browser-run")["step"] >= 20, "training progress")
    wait_until(browser, lambda d: "steps/s" in page_text(d) and "ETA" in page_text(d), "live speed and ETA")
    assert page_errors(browser) == []
    screenshot(browser, tmp_path, "train", 1000)
    job = registry.jobs()[0]
    assert job.run == "browser-run" and is_our_process(job)
    click(browser, "Stop")
    wait_until(browser, lambda d: "stopped (checkpoint kept" in page_text(d), "the job to show as stopped")
    assert not is_our_process(job) and registry.status(job) == "stopped"
    step = int(registry.log_tail(job).split("stopped at step ")[1].split()[0])
    assert list_checkpoints(runs / "browser-run" / "checkpoints")[-1].name == f"ckpt-{step:08d}.safetensors"
    wait_until(browser, lambda d: button(d, "Resume"), "the Resume button")
    assert page_errors(browser) == []
