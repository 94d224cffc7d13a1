"""docs/tutorial.md must run as written: every ```python block, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def test_tutorial_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{TUTORIAL.name}[block {i}]", "exec"), namespace)
    assert 0 <= namespace["metrics"]["macro_f1"] <= 1
    assert len(namespace["enrichment"]) > 0
