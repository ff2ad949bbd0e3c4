"""The page at / in a real headless browser (Debian's chromium driven by Selenium through
chromium-driver; scripts/test.sh installs both): it loads, a FASTA file is uploaded and submitted, the
contact picture with its top-L list and the landscape heat map appear, hovering a cell shows its
score, and the mean embedding downloads as .npy. No console errors (a CSP violation is one)."""

from __future__ import annotations

import io
import os
import re
import shutil
import time

import httpx
import numpy as np
import pytest

from .conftest import start

CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1300,1600")
SEQ = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQD"

if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
    # scripts/test.sh installs them, so in CI a missing browser is a failure, not a skip
    if os.environ.get("CI"):
        raise RuntimeError(f"CI needs {CHROMIUM} and {DRIVER}: apt-get install chromium chromium-driver")
    pytest.skip("Debian's chromium and chromium-driver are not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def server(serve_model):
    with start(serve_model) as s:
        yield s


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(tmp_path),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.download_dir = tmp_path
    yield driver
    driver.quit()


def test_page_shows_contacts_landscape_and_downloads_the_embedding(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    wait.until(lambda d: "debug" in d.find_element(By.ID, "model").text)
    fasta = tmp_path / "query.fasta"
    fasta.write_text(f">my_protein some description\n{SEQ[:30]}\n{SEQ[30:]}\n>second\nMKV\n")
    browser.find_element(By.ID, "file").send_keys(str(fasta))  # the upload fills the text box
    wait.until(lambda d: d.find_element(By.ID, "sequence").get_attribute("value").startswith(">my_protein"))
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "contact-map").get_attribute("data-ready") == "1")
    wait.until(lambda d: d.find_element(By.ID, "landscape").get_attribute("data-ready") == "1")

    L = len(SEQ)
    assert f"my_protein, L = {L}" in browser.find_element(By.ID, "contact-title").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#top-contacts tbody tr")
    assert len(rows) == L  # top-L
    first = [td.text for td in rows[0].find_elements(By.TAG_NAME, "td")]
    assert first[0] == "1" and int(first[2]) - int(first[1]) >= 6
    # both pictures are drawn (many colours), each with its colour bar
    for canvas in ("contact-map", "landscape", "contact-bar", "landscape-bar"):
        colours = browser.execute_script(
            "const c = document.getElementById(arguments[0]), d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data, s = new Set();"
            "for (let i = 0; i < d.length; i += 4 * 7) s.add(d[i] << 16 | d[i + 1] << 8 | d[i + 2]); return s.size;",
            canvas)
        assert colours > 20, canvas

    # hover the cell of position 5, amino acid C (row 1): the tooltip shows the API's score
    land = browser.find_element(By.ID, "landscape")
    cw = max(3, min(14, 900 // L))
    x, y = 18 + 4 * cw + cw // 2, 4 + 1 * 12 + 6
    ActionChains(browser).move_to_element_with_offset(land, x - land.size["width"] // 2,
                                                      y - land.size["height"] // 2).perform()
    tip = browser.find_element(By.ID, "tooltip")
    assert tip.is_displayed()
    m = re.fullmatch(r"Y5C: (-?\d+\.\d{3})", tip.text)
    assert m, tip.text
    api = httpx.post(server.url + "/v1/variants", json={"sequence": SEQ, "mutations": ["Y5C"]}).json()
    assert abs(float(m.group(1)) - api["scores"][0]["score"]) < 1e-3

    browser.find_element(By.ID, "download-npy").click()
    path = tmp_path / "my_protein_mean.npy"
    deadline = time.monotonic() + 20
    while not path.exists():
        assert time.monotonic() < deadline, list(tmp_path.iterdir())
        time.sleep(0.05)
    time.sleep(0.2)  # let the download finish writing
    mean = np.load(io.BytesIO(path.read_bytes()))
    assert mean.shape == (1, 1, 64) and mean.dtype == np.float32

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
