"""Load test of `moaspace serve` on 127.0.0.1, side by side with `moaspace predict`.

    python benchmarks/bench_serve.py --model demo_out/model --query demo_out/data_split.h5ad
    python benchmarks/bench_serve.py --model M --requests 50 --concurrency 4 --cli-runs 2

Starts `moaspace serve MODEL` in a child process on a free loopback port, then sends
``--requests`` POST /api/predict uploads of ``--batch`` signatures each (``.h5ad`` files,
drawn with replacement from ``--query``'s rows, or seeded N(0, 1) z-scores over the model's
genes), ``--concurrency`` at a time, and records throughput, latency percentiles, errors
(any answer but 200) and the server's resident memory every 0.5 s. Bounded: never more
than ``--requests`` requests and ``--time-limit`` seconds of load; only 127.0.0.1 is
contacted. Then the same work through the CLI: `moaspace predict` on ``--cli-runs`` of
the same batch files (one process per file: start-up, model load, predict, write), and
once on all requests' signatures in one file. Results:
``benchmarks/results/bench_serve.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # the only address this script contacts


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _batches(model_dir: Path, query: Path | None, n_files: int, batch: int, folder: Path,
             seed: int) -> list[Path]:
    """``n_files`` distinct .h5ad files of ``batch`` signatures over the model's genes."""
    import anndata as ad

    from moaspace.io import read_query
    from moaspace.pp import write_h5ad

    genes = json.loads((model_dir / "config.json").read_text())["genes"]
    rng = np.random.default_rng(seed)
    if query is not None:
        source = read_query(query)
        source = source[:, [g for g in genes if g in set(source.var_names)]]
        x_all = np.asarray(source.X.toarray() if hasattr(source.X, "toarray") else source.X,
                           dtype=np.float32)
        var = list(source.var_names)
    paths = []
    for i in range(n_files):
        if query is not None:
            x = x_all[rng.integers(0, len(x_all), batch)]
        else:
            x, var = rng.standard_normal((batch, len(genes))).astype(np.float32), genes
        adata = ad.AnnData(x, obs={"pert_id": [f"Q{i:03d}_{j % 10}" for j in range(batch)]})
        adata.obs_names = [f"q{i:03d}_{j:03d}" for j in range(batch)]
        adata.var_names = var
        path = folder / f"batch_{i:03d}.h5ad"
        write_h5ad(adata, path)
        paths.append(path)
    return paths


class _Sampler(threading.Thread):
    """The server's resident memory every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        import psutil

        self.proc, self.every, self.samples = psutil.Process(pid), every, []
        self.stop = threading.Event()
        self.t0 = time.perf_counter()

    def run(self):
        while not self.stop.is_set():
            try:
                rss = sum(p.memory_info().rss for p in [self.proc, *self.proc.children(True)])
            except Exception:  # the process ended
                break
            self.samples.append((round(time.perf_counter() - self.t0, 2), rss))
            self.stop.wait(self.every)


def _start_server(model_dir: Path, port: int, workers: int):
    cmd = [sys.executable, "-m", "moaspace.cli", "--quiet", "serve", str(model_dir),
           "--host", HOST, "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not answer /healthz within 180 s")


def _load(port: int, files: list[Path], n_requests: int, concurrency: int,
          time_limit: float) -> dict:
    """Send the requests; latency per request, errors, wall time."""
    import httpx

    url = f"http://{HOST}:{port}/api/predict"
    payloads = [p.read_bytes() for p in files]
    local = threading.local()
    stop_at = time.perf_counter() + time_limit

    def one(i: int):
        if time.perf_counter() > stop_at:
            return None
        client = getattr(local, "client", None) or httpx.Client(timeout=120)
        local.client = client
        t0 = time.perf_counter()
        try:
            res = client.post(url, files={"file": (f"b{i}.h5ad", payloads[i % len(payloads)])})
            ok = res.status_code == 200 and len(res.json()["signatures"]) > 0
            err = None if ok else f"{res.status_code}: {res.text[:200]}"
        except Exception as exc:  # a failed request is an error, not a crash of the test
            err = f"{type(exc).__name__}: {exc}"
        return time.perf_counter() - t0, err

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = [r for r in pool.map(one, range(n_requests)) if r is not None]
    wall = time.perf_counter() - t0
    lat = np.array([d[0] for d in done])
    errors = [d[1] for d in done if d[1]]
    return {"requests": len(done), "errors": len(errors), "error_examples": errors[:5],
            "wall_s": round(wall, 3), "requests_per_s": round(len(done) / wall, 3),
            "latency_s": {q: round(float(np.percentile(lat, p)), 4) for q, p in
                          (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))},
            "stopped_by_time_limit": len(done) < n_requests}


def _cli(model_dir: Path, files: list[Path], folder: Path) -> list[float]:
    times = []
    for i, path in enumerate(files):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "moaspace.cli", "--quiet", "predict",
                        str(model_dir), str(path), "--out", str(folder / f"cli_{i}.h5ad")],
                       check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return times


def _one_file(files: list[Path], n_requests: int, folder: Path) -> Path:
    """All requests' signatures (the load test's whole work) in one file."""
    import anndata as ad

    from moaspace.pp import read_h5ad, write_h5ad

    parts = [read_h5ad(files[i % len(files)]) for i in range(n_requests)]
    for i, part in enumerate(parts):
        part.obs_names = [f"r{i:05d}_{n}" for n in part.obs_names]
    path = folder / "all.h5ad"
    write_h5ad(ad.concat(parts), path)
    return path


def _memory(samples: list, load_start: float, load_end: float) -> dict:
    """Resident memory of the server: at start-up, over the load (its first and last
    quarter: flat means no growth per request) and sampled over time."""
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples], dtype=np.float64) / 2**20
    during = rss[(t >= load_start) & (t <= load_end)]
    if len(during) == 0:
        during = rss[-1:]
    quarter = max(1, len(during) // 4)
    step = max(1, len(samples) // 120)
    return {"rss_mib_at_start": round(float(rss[0]), 1),
            "load_window_s": [round(load_start, 2), round(load_end, 2)],
            "rss_mib_load_first_quarter_mean": round(float(during[:quarter].mean()), 1),
            "rss_mib_load_last_quarter_mean": round(float(during[-quarter:].mean()), 1),
            "rss_mib_max": round(float(rss.max()), 1),
            "series_s_mib": [(t, round(r / 2**20, 1)) for t, r in samples[::step]]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="Trained model directory.")
    ap.add_argument("--query", type=Path, help="Signatures to draw batches from (any format "
                    "predict reads); default: N(0, 1) z-scores over the model's genes.")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100, help="Signatures per request.")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1, help="Server worker processes.")
    ap.add_argument("--files", type=int, default=10, help="Distinct batch files cycled.")
    ap.add_argument("--cli-runs", type=int, default=5, help="CLI predict runs, one per file.")
    ap.add_argument("--time-limit", type=float, default=900, help="Seconds of load at most.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_serve.json")
    args = ap.parse_args(argv)
    from moaspace._utils import atomic_write_text, provenance

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        folder = Path(tmp)
        files = _batches(args.model, args.query, args.files, args.batch, folder, args.seed)
        port = _free_port()
        proc = _start_server(args.model, port, args.workers)
        sampler = _Sampler(proc.pid)
        sampler.start()
        try:
            warm = _load(port, files, min(10, args.requests), 2, 120)
            marks = [time.perf_counter() - sampler.t0]
            load = _load(port, files, args.requests, args.concurrency, args.time_limit)
            marks.append(time.perf_counter() - sampler.t0)
        finally:
            sampler.stop.set()
            sampler.join()
            proc.terminate()
            proc.wait(timeout=60)
        cli_times = _cli(args.model, files[: args.cli_runs], folder)
        everything = _one_file(files, load["requests"], folder)
        t0 = time.perf_counter()
        _cli(args.model, [everything], folder)
        one_batch = time.perf_counter() - t0
    signatures = load["requests"] * args.batch
    cli_mean = float(np.mean(cli_times))
    result = {
        **provenance(), "host": HOST, "machine": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_1_5_15min": {"before": [round(v, 2) for v in load_before],
                                   "after": [round(v, 2) for v in os.getloadavg()]},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "warmup": warm, "server": {**load, "signatures_per_s": round(signatures / load["wall_s"],
                                                                     1)},
        "memory": _memory(sampler.samples, *marks),
        "cli_per_file": {"runs": len(cli_times), "seconds": [round(t, 3) for t in cli_times],
                         "mean_s": round(cli_mean, 3), "requests_per_s": round(1 / cli_mean, 3)},
        "cli_all_in_one_file": {"signatures": signatures, "wall_s": round(one_batch, 3),
                                "signatures_per_s": round(signatures / one_batch, 1)},
        "ratios": {"server_over_cli_per_file_throughput": round(
                       load["requests_per_s"] * cli_mean, 2),
                   "cli_per_file_mean_over_server_p50": round(
                       cli_mean / load["latency_s"]["p50"], 2),
                   "server_over_cli_one_file_throughput": round(
                       signatures / load["wall_s"] / (signatures / one_batch), 3)}}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    summary = {k: result[k] for k in ("server", "cli_per_file", "cli_all_in_one_file",
                                      "ratios")}
    print(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in result["memory"].items() if k != "series_s_mib"}))
    return result


if __name__ == "__main__":
    main()
