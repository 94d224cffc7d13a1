"""`moaspace serve` under concurrent requests on 127.0.0.1 (a real uvicorn server): answers
never mix, bad uploads among good ones change nothing, and a tiny run of the load test
benchmarks/bench_serve.py (the full one is not part of the test suite)."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

import moaspace
from _serve_helpers import LiveServer
from moaspace.pp import write_h5ad
from moaspace.serve import create_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def subsets(saved_model, tmp_path_factory):
    """12 different queries (rows and sizes) and what tl.predict answers for each."""
    folder = tmp_path_factory.mktemp("subsets")
    query, model = saved_model["query"], saved_model["model"]
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):
        rows = np.sort(rng.choice(query.n_obs, int(rng.integers(1, query.n_obs)), replace=False))
        sub = query[rows].copy()
        path = folder / f"q{i}.h5ad"
        write_h5ad(sub, path)
        expected = moaspace.tl.predict(model, sub, compound_key=None)
        out.append((path.read_bytes(), expected))
    return out


def test_concurrent_uploads_do_not_corrupt_each_other(saved_model, subsets, tmp_path):
    app = create_app(saved_model["model_dir"], tmp_dir=tmp_path)
    junk = [b"", b"\x00\x01junk", b"sig\t1000\nS1\tnan\n"]

    def post(i: int):
        with httpx.Client(base_url=url, timeout=120) as client:
            if i % 5 == 4:  # a bad upload among the good ones
                res = client.post("/api/predict",
                                  files={"file": ("bad.tsv", junk[i % len(junk)])})
                return i, res.status_code, None
            data, _ = subsets[i % len(subsets)]
            res = client.post("/api/predict", files={"file": (f"q{i}.h5ad", data)})
            return i, res.status_code, res.json()

    with LiveServer(app) as url, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, range(64)))
    for i, status, payload in answers:
        if i % 5 == 4:
            assert status == 400, (i, status)
            continue
        assert status == 200, (i, status, payload)
        expected = subsets[i % len(subsets)][1]
        rows = payload["signatures"]
        assert [r["id"] for r in rows] == expected.obs_names.tolist()
        assert [r["moa_pred"] for r in rows] == expected.obs["moa_pred"].astype(str).tolist()
        np.testing.assert_allclose([r["score"] for r in rows], expected.obs["moa_pred_score"],
                                   rtol=0, atol=1e-6)
    assert list(tmp_path.iterdir()) == []  # every upload's temporary folder is gone


def test_the_load_test_script_runs_small(saved_model, tmp_path):
    out = tmp_path / "bench_serve.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), "--model",
         str(saved_model["model_dir"]), "--query", str(saved_model["root"] / "query.h5ad"),
         "--requests", "12", "--batch", "5", "--concurrency", "3", "--files", "2",
         "--cli-runs", "1", "--time-limit", "60", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["server"]["requests"] == 12 and result["server"]["errors"] == 0
    assert result["host"] == "127.0.0.1"
    assert result["server"]["latency_s"]["p50"] <= result["server"]["latency_s"]["p95"]
    assert result["cli_per_file"]["runs"] == 1 and result["ratios"]
    assert result["memory"]["series_s_mib"]


def test_cli_serve_with_two_workers_answers(saved_model):
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moaspace.cli", "--quiet", "serve",
                             str(saved_model["model_dir"]), "--port", str(port),
                             "--workers", "2", "--token", "a-long-token"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "no answer from the two-worker server"
            time.sleep(0.5)
        data = (saved_model["root"] / "query.h5ad").read_bytes()
        assert httpx.post(url + "/api/predict", files={"file": ("q.h5ad", data)},
                          timeout=120).status_code == 401
        res = httpx.post(url + "/api/predict", files={"file": ("q.h5ad", data)}, timeout=120,
                         headers={"Authorization": "Bearer a-long-token"})
        assert res.status_code == 200
        assert len(res.json()["signatures"]) == saved_model["query"].n_obs
    finally:
        proc.terminate()
        proc.wait(timeout=60)
