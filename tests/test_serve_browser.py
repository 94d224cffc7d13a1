"""The query page in a real browser: headless Chromium (through selenium, as the report
test drives it) uploads a file to `moaspace serve` on 127.0.0.1, reads the results table,
and its calls are `moaspace predict`'s on the same file."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from _cli import cli
from _serve_helpers import LiveServer
from moaspace.io import write_gctx
from moaspace.pp import read_h5ad
from moaspace.serve import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver must be installed in CI (.ci/run does it)")
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("profile")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1280,2200"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield drv
    drv.quit()


def _results(drv, timeout: float = 60) -> list[dict]:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(drv, timeout).until(
        lambda d: d.execute_script(
            "return !document.getElementById('results').hidden && "
            "document.querySelectorAll('#results-table tbody tr').length > 0 && "
            "document.getElementById('status').textContent === ''"))
    return drv.execute_script("""
        return Array.from(document.querySelectorAll('#results-table tbody tr')).map(tr => ({
          id: tr.dataset.id, moa: tr.dataset.moa, score: Number(tr.dataset.score),
          cells: Array.from(tr.cells).map(c => c.textContent)}));""")


def _upload(drv, url: str, path, *, group_by: str | None = None) -> list[dict]:
    from selenium.webdriver.common.by import By

    drv.get(url + "/")
    drv.find_element(By.ID, "file").send_keys(str(path))
    if group_by:
        drv.find_element(By.CSS_SELECTOR, "input[name=level][value=compound]").click()
        box = drv.find_element(By.ID, "group-by")
        box.clear()
        box.send_keys(group_by)
    drv.find_element(By.ID, "run").click()
    return _results(drv)


def test_page_upload_gives_the_cli_calls(driver, saved_model, tmp_path):
    query = saved_model["query"]
    path = tmp_path / "query.gctx"
    write_gctx(path, np.asarray(query.X), query.obs_names, query.var_names,
               col_meta=query.obs[["pert_id"]].reset_index(drop=True))
    res = cli("predict", saved_model["model_dir"], path, "--out", tmp_path / "pred.h5ad",
              "--compound-level")
    assert res.code == 0, res.stderr[-2000:]
    expected = read_h5ad(tmp_path / "pred.h5ad")
    app = create_app(saved_model["model_dir"])
    with LiveServer(app) as url:
        rows = _upload(driver, url, path)
        assert [r["id"] for r in rows] == expected.obs_names.tolist()
        assert [r["moa"] for r in rows] == expected.obs["moa_pred"].astype(str).tolist()
        np.testing.assert_allclose([r["score"] for r in rows], expected.obs["moa_pred_score"],
                                   rtol=0, atol=1e-6)
        assert [r["cells"][1].split(" (nearest")[0] for r in rows] == [r["moa"] for r in rows]
        n_queries = driver.execute_script(
            "return document.querySelectorAll('#queries path.query').length")
        n_refs = driver.execute_script("return document.querySelectorAll('.refs circle').length")
        assert n_queries == len(rows) and n_refs == saved_model["model"].atlas.n_obs
        # per compound, grouping by the file's pert_id column
        groups = _upload(driver, url, path, group_by="pert_id")
        calls = expected.uns["moa_compound_calls"] if "moa_compound_calls" in expected.uns \
            else expected.uns["moa"]["compound_calls"]
        assert [g["id"] for g in groups] == calls["compound"].astype(str).tolist()
        assert [g["moa"] for g in groups] == calls["moa_pred"].astype(str).tolist()
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        shot = tmp_path / "serve_page.png"  # kept in the test temp dir for a person to look at
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000


def test_page_shows_a_bad_file_as_one_line(driver, saved_model, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "bad.tsv"
    bad.write_text("sig\t1000\t1001\nS1\t0.5\toops\n")
    with LiveServer(create_app(saved_model["model_dir"])) as url:
        from selenium.webdriver.common.by import By

        driver.get(url + "/")
        driver.find_element(By.ID, "file").send_keys(str(bad))
        driver.find_element(By.ID, "run").click()
        WebDriverWait(driver, 30).until(
            lambda d: not d.find_element(By.ID, "error").get_attribute("hidden"))
        text = driver.find_element(By.ID, "error").text
        assert text.startswith("400: bad.tsv: non-numeric value 'oops'"), text
        assert "\n" not in text and "Traceback" not in text
