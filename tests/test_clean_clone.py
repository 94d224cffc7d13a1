"""The README's first command works from a clean clone: `git clone` then `make demo`.

(The second, `make test`, is what CI runs on a clean clone of main.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_demo_from_clean_clone(tmp_path):
    if not (ROOT / ".git").exists() or not shutil.which("git") or not shutil.which("make"):
        pytest.skip("needs a git checkout, git and make")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTEST"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if ".venv" not in p)
    python = shutil.which("python3.11") or shutil.which("python3") or sys.executable
    proc = subprocess.run(["make", "demo", f"PYTHON={python}", f"DEMO_OUT={tmp_path / 'out'}"],
                          cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = tmp_path / "out" / "report.html"
    assert report.exists() and report.stat().st_size > 50_000
    assert str(report.resolve()) in proc.stdout  # the demo ends by printing the report's path
    summary = (tmp_path / "out" / "summary.json").read_text()
    assert '"test_macro_f1"' in summary
