"""Runs killed mid-write (SIGKILL: no cleanup code runs) never leave a half-written output
at the final path, and never damage the output of an earlier run.

Outputs are written to ``.NAME.<random>.<suffix>.tmp`` beside the target and renamed
onto it (``moaspace._utils.atomic_path``). A kill can leave that temporary file
behind (nothing can remove it: the process is gone); it never has the output's name,
so no reader mistakes it for a result. See docs/reliability.md.

Training kill/resume is tested in tests/test_model.py
(``test_resume_after_sigkill``, ``test_resume_after_interruption_matches_uninterrupted``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import landmarks
from moaspace.errors import InputError
from moaspace.io import read_gctx, write_gctx
from moaspace.pp._prepare import read_h5ad, write_h5ad

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
N_SIGS = 40_000  # x 978 landmark genes: a 156 MB matrix, written in well under a second


class _Rows:
    """Row-sliceable matrix made on demand (the writer streams it in blocks)."""

    def __init__(self, n_rows: int, n_cols: int):
        self.shape = (n_rows, n_cols)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        rng = np.random.default_rng([7, start])
        return rng.standard_normal((stop - start, self.shape[1]), dtype=np.float32)


@pytest.fixture(scope="module")
def big_release(tmp_path_factory) -> dict[str, Path]:
    """A release whose N_SIGS signatures all pass the default prepare filters."""
    root = tmp_path_factory.mktemp("big_release")
    lm = landmarks()
    gene_ids = lm["pr_gene_id"].astype(str).tolist()
    n_cpd = N_SIGS // 20
    cpd = np.arange(N_SIGS) % n_cpd
    pert = np.array([f"BRD-K{i:08d}" for i in range(n_cpd)])
    moa = np.array([f"MoA {i // 25}" for i in range(n_cpd)])
    sig_ids = [f"P{i // 384:04d}_A549_24H:{pert[cpd[i]]}:{i % 384}" for i in range(N_SIGS)]
    paths = {k: root / n for k, n in (("gctx", "big.gctx"), ("siginfo", "siginfo.txt"),
                                      ("geneinfo", "geneinfo.txt"), ("moa_labels", "moa.csv"))}
    write_gctx(paths["gctx"], _Rows(N_SIGS, len(gene_ids)), sig_ids, gene_ids, chunk_rows=512)
    pd.DataFrame({"sig_id": sig_ids, "pert_id": pert[cpd], "cmap_name": pert[cpd],
                  "pert_type": "trt_cp", "cell_iname": "A549", "pert_time": 24, "is_hiq": 1,
                  "tas": 0.5}).to_csv(paths["siginfo"], sep="\t", index=False)
    pd.DataFrame({"gene_id": gene_ids, "gene_symbol": lm["pr_gene_symbol"],
                  "feature_space": "landmark"}).to_csv(paths["geneinfo"], sep="\t", index=False)
    pd.DataFrame({"pert_id": pert, "moa": moa}).to_csv(paths["moa_labels"], index=False)
    return paths


def _temps(folder: Path, name: str, suffix: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*{suffix}"))


@contextlib.contextmanager
def _to_be_killed(cmd: list[str]):
    """Run ``cmd``; the body must SIGKILL it. Always reaped; asserts it died by SIGKILL."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _kill_when_writing(cmd: list[str], folder: Path, name: str, suffix: str,
                       min_bytes: int = 1, timeout: float = 240.0) -> int:
    """Start ``cmd``; SIGKILL it as soon as its temporary output holds ``min_bytes``.

    Returns the size of the temporary file at the moment of the kill.
    """
    deadline = time.monotonic() + timeout
    size = -1
    with _to_be_killed(cmd) as proc:
        while time.monotonic() < deadline:
            temps = _temps(folder, name, suffix)
            if temps:
                try:
                    size = temps[0].stat().st_size
                except FileNotFoundError:  # renamed between glob and stat: too late
                    size = -1
                if size >= min_bytes:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            if proc.poll() is not None:
                pytest.fail(f"finished (rc {proc.returncode}) before it could be killed "
                            f"mid-write: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.001)
        else:
            pytest.fail(f"no temporary output .{name}.*{suffix} within {timeout} s")
    return size


def _prepare_cmd(paths: dict[str, Path], out: Path) -> list[str]:
    return [sys.executable, "-m", "moaspace.cli", "--quiet", "prepare",
            "--gctx", str(paths["gctx"]), "--siginfo", str(paths["siginfo"]),
            "--geneinfo", str(paths["geneinfo"]), "--moa-labels", str(paths["moa_labels"]),
            "--out", str(out)]


def test_prepare_killed_mid_write_keeps_previous_output(big_release, tmp_path):
    out = tmp_path / "data.h5ad"
    old = ad_small()
    write_h5ad(old, out)
    before = out.read_bytes()
    size = _kill_when_writing(_prepare_cmd(big_release, out), tmp_path, out.name, ".h5ad.tmp",
                              min_bytes=1 << 20)
    matrix_bytes = N_SIGS * 978 * 4
    assert 0 < size < matrix_bytes  # killed while the matrix was being written
    assert out.read_bytes() == before  # the earlier result, byte for byte
    np.testing.assert_array_equal(read_h5ad(out).X, old.X)
    leftovers = _temps(tmp_path, out.name, ".h5ad.tmp")
    assert len(leftovers) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data.h5ad",
                                                                  leftovers[0].name])
    # the leftover is not a usable result, and it does not carry the output's name
    with pytest.raises(InputError, match=leftovers[0].name):
        read_h5ad(leftovers[0])


def test_prepare_killed_mid_write_leaves_no_output(big_release, tmp_path):
    out = tmp_path / "fresh.h5ad"
    _kill_when_writing(_prepare_cmd(big_release, out), tmp_path, out.name, ".h5ad.tmp")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
    # a rerun after the crash succeeds and is complete (the leftover is simply ignored)
    proc = subprocess.run(_prepare_cmd(big_release, out), capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    back = read_h5ad(out)
    assert back.shape == (N_SIGS, 978)
    np.testing.assert_array_equal(back.X[:3], read_gctx(big_release["gctx"],
                                                        cids=list(back.obs_names[:3])).X)


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    from moaspace.io import write_gctx

    out, marker = Path(sys.argv[1]), Path(sys.argv[2])

    class Slow:
        shape = (40_000, 100)
        def __getitem__(self, rows):
            start, stop, _ = rows.indices(self.shape[0])
            if start >= 8_192:  # two blocks are on disk: say so, then crawl
                marker.write_text(str(start))
                time.sleep(0.5)
            return np.full((stop - start, 100), 2.0, np.float32)

    write_gctx(out, Slow(), [f"new{i}" for i in range(40_000)],
               [str(g) for g in range(100)], chunk_rows=256)
""")


def test_write_gctx_killed_mid_write_keeps_previous_file(tmp_path):
    out = tmp_path / "release.gctx"
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_gctx(out, X, ["a", "b", "c", "d"], ["1", "2", "3"])
    before = out.read_bytes()
    marker = tmp_path / "marker"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    with _to_be_killed([sys.executable, str(script), str(out), str(marker)]) as proc:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() else "slow"
        temps = _temps(tmp_path, out.name, ".gctx.tmp")
        assert len(temps) == 1 and temps[0].stat().st_size > 0
        os.kill(proc.pid, signal.SIGKILL)
    assert out.read_bytes() == before
    again = read_gctx(out)
    np.testing.assert_array_equal(again.X, X)
    assert list(again.obs_names) == ["a", "b", "c", "d"]
    leftovers = _temps(tmp_path, out.name, ".gctx.tmp")
    assert len(leftovers) == 1  # the dead writer's temp file: never named release.gctx
    with pytest.raises(InputError, match="not a GCTX file|cannot open"):
        read_gctx(leftovers[0])


def ad_small():
    import anndata as ad

    return ad.AnnData(np.arange(6, dtype=np.float32).reshape(2, 3))
