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


PUBLIC = {"moaspace", "moaspace.io", "moaspace.pp", "moaspace.datasets", "moaspace.model",
          "moaspace.tl", "moaspace.pl", "moaspace.benchmark"}


def _private_uses(code: str) -> list[str]:
    """moaspace imports or attributes in ``code`` outside the public surface."""
    import ast

    bad = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("moaspace"):
            if node.module not in PUBLIC:
                bad.append(node.module)
            bad += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            bad += [a.name for a in node.names
                    if a.name.startswith("moaspace") and a.name not in PUBLIC]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            bad.append(node.attr)
    return bad


def test_tutorial_uses_only_the_public_surface():
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    assert "import moaspace as ms" in blocks[0]
    assert [b for code in blocks for b in _private_uses(code)] == []
    # the check itself sees a private import and a private attribute
    assert _private_uses("from moaspace.tl._predict import predict\nms.pp._split") == [
        "moaspace.tl._predict", "_split"]


README = TUTORIAL.parents[1] / "README.md"


def test_readme_quickstart_runs_on_the_demo_release(tmp_path, monkeypatch):
    """The README's quickstart, as printed, on the embedded demo release (the release's file
    names swapped for the demo's paths, 2 epochs instead of 60), on the public surface."""
    import moaspace as ms

    text = README.read_text()
    code = re.findall(r"```python\n(.*?)```", text[text.index("## Quickstart"):], flags=re.S)[0]
    assert _private_uses(code) == []
    paths = ms.datasets.load_demo_paths()
    for name, key in (("level5_beta_trt_cp_n720216x12328.gctx", "gctx"),
                      ("siginfo_beta.txt", "siginfo"), ("geneinfo_beta.txt", "geneinfo"),
                      ("compoundinfo_beta.txt", "compoundinfo"), ("moa_labels.csv", "moa_labels")):
        assert f'"{name}"' in code, name
        code = code.replace(f'"{name}"', repr(str(paths[key])))
    assert "max_epochs=60" in code
    code = code.replace("max_epochs=60", "max_epochs=2")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md[quickstart]", "exec"), namespace)
    result = namespace["result"]
    assert {"X_moa"} <= set(result.obsm) and {"moa_pred", "moa_pred_score"} <= set(result.obs)
    assert 0 <= namespace["metrics"]["macro_f1"] <= 1
