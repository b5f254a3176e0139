"""The same flow in a real headless browser (Debian's chromium + chromedriver, driven by
selenium): pages render, the chart grows while the job runs, the classification shows the
right digit. Screenshots of each page go to $NETFORGE_SHOTS (default /tmp/serve-shots)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serve import reference
from tests.serve.helpers import ServerProcess, wait_until, write_digits

pytestmark = pytest.mark.slow
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SHOTS = Path(os.environ.get("NETFORGE_SHOTS", "/tmp/serve-shots"))
ITERATIONS = 400


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver;"
                    " .ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1300", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser") / "workspace"
    root.mkdir()
    images, labels = write_digits(root / "digits", 30)
    process = ServerProcess(root)
    client = process.start()
    yield client, root, images, labels
    process.stop()


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def fill(driver, form_id: str, values: dict) -> None:
    form = driver.find_element(By.ID, form_id)
    for name, value in values.items():
        field = form.find_elements(By.NAME, name)[-1]  # (a checkbox follows its hidden twin)
        if field.tag_name == "select":
            field.find_element(By.CSS_SELECTOR, f'option[value="{value}"]').click()
        elif field.get_attribute("type") == "checkbox":
            if field.is_selected() != bool(value):
                field.click()
        else:
            field.clear()
            field.send_keys(str(value))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def test_pages_chart_and_classification_in_a_browser(browser, site, tmp_path):
    client, root, images, labels = site
    base = client.base
    browser.get(base + "/")
    assert browser.find_element(By.CSS_SELECTOR, "header .brand").text == "netforge"
    shot(browser, "1-home-empty")

    # A dataset from the digits folder, through the form; the page follows the conversion.
    browser.get(base + "/datasets")
    assert browser.find_element(By.CSS_SELECTOR, "#folders option").get_attribute("value") \
        == "digits"
    shot(browser, "2-datasets-form")
    fill(browser, "dataset-form", {"name": "digits", "source": "digits", "gray": True,
                                   "val_fraction": "0.2"})
    wait_until(lambda: browser.find_elements(By.ID, "counts"), 60, what="the counts table")
    assert client.json("GET", "/api/datasets/1")["options"]["gray"] is True
    rows = browser.find_elements(By.CSS_SELECTOR, "#counts tr")
    assert [r.text.split() for r in rows[1:3]] == [["0", "24", "6"], ["1", "24", "6"]]
    assert rows[-1].text.split() == ["total", "240", "60"]
    wait_until(lambda: browser.execute_script(
        "return document.getElementById('samples').naturalWidth") == 8 * 30 + 2, 30,
        what="the sample grid to load")
    shot(browser, "2b-dataset-done")

    # A LeNet job through the form; the chart must grow while the state says running.
    browser.get(base + "/jobs/new?dataset=1")
    networks = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "select[name=network] "
                                                                       "option")]
    assert networks[:2] == ["lenet", "cifar10_quick"] and networks[-1] == "custom"
    shot(browser, "3-job-new")
    fill(browser, "job-form", {"name": "lenet-digits", "network": "lenet",
                               "max_iter": ITERATIONS, "snapshot": 200, "display": 10,
                               "test_interval": 100, "batch_size": 32})
    wait_until(lambda: "/jobs/1" in browser.current_url, 60, what="the job page")
    samples = []

    def chart_sample():
        count = browser.execute_script(
            "const s = document.querySelector('#chart polyline[data-name=\"train loss\"]');"
            "return s ? Number(s.dataset.count) : 0;")
        state = browser.find_element(By.ID, "job-state").text
        samples.append((count, state))
        return state != "running" or len({c for c, s in samples if s == "running" and c}) >= 3

    wait_until(chart_sample, 180, 0.25, "the chart to update")
    running = [c for c, s in samples if s == "running" and c]
    assert len(set(running)) >= 3 and running == sorted(running), samples
    shot(browser, "4-job-running")
    wait_until(lambda: browser.find_element(By.ID, "job-state").text == "done", 180,
               what="the job to finish")
    wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#snapshots li a")) == 4,
               30, what="the snapshots list after the reload")
    count = browser.execute_script(
        "return Number(document.querySelector('#chart polyline[data-name=\"train loss\"]')"
        ".dataset.count)")
    assert count == ITERATIONS // 10 + 1
    shot(browser, "5-job-done")

    # Classify a digit that the independent LeNet gets right; the page must show that digit.
    weights = reference.read_caffemodel(root / "jobs" / "1" /
                                        f"snapshot_iter_{ITERATIONS}.caffemodel")
    first = [int(np.flatnonzero(labels == k)[0]) for k in range(10)]
    probs = reference.lenet_probabilities(weights, images[first])
    right = [k for k in range(10) if probs[k].argmax() == k]
    digit = max(right, key=lambda k: probs[k, k])
    path = tmp_path / f"digit-{digit}.png"
    Image.fromarray(images[first[digit]]).save(path)
    form = browser.find_element(By.ID, "classify-form")
    form.find_element(By.NAME, "images").send_keys(str(path))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    top1 = wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#classify-results .top1"),
                      60, what="the classification")
    assert top1[0].text == str(digit)
    shown = browser.find_element(By.CSS_SELECTOR, "#classify-results table.top td:nth-child(2)")
    assert shown.text == f"{100 * probs[digit, digit]:.1f}%"
    shot(browser, "6-classified")

    # The confusion matrix on the val split, as the API gives it.
    browser.find_element(By.CSS_SELECTOR, "#confusion-form button[type=submit]").click()
    wait_until(lambda: browser.find_elements(By.ID, "overall-accuracy"), 60,
               what="the confusion matrix")
    cells = browser.find_elements(By.CSS_SELECTOR, "table.confusion tr")
    shown_matrix = [[int(td.text) for td in row.find_elements(By.TAG_NAME, "td")[:10]]
                    for row in cells[1:]]
    assert shown_matrix == client.json("POST", "/api/jobs/1/confusion", {})["matrix"]
    browser.execute_script("document.getElementById('confusion-results').scrollIntoView()")
    time.sleep(0.2)
    shot(browser, "7-confusion")

    browser.get(base + "/")
    assert "lenet-digits" in browser.find_element(By.ID, "jobs").text
    shot(browser, "8-home")
    browser.get(base + "/api")
    assert browser.find_element(By.TAG_NAME, "h1").text == "JSON API"
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.api tr")) > 20
    shot(browser, "9-api")
