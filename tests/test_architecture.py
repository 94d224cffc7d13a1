"""The package's shape (docs/architecture.md): layers that only look down, no import cycle,
rooms of a readable size, and the public surface a notebook user reads."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "moaspace"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80

#: the layers, lowest first; a module may import from its own layer and those below it
LAYERS = [
    ("moaspace", "moaspace._version", "moaspace.errors", "moaspace._utils"),
    ("moaspace.io",),
    ("moaspace._core",),
    ("moaspace.pp", "moaspace.datasets"),
    ("moaspace.model",),
    ("moaspace.tl",),
    ("moaspace.benchmark",),
    ("moaspace.report", "moaspace.workflow", "moaspace.cli", "moaspace.serve"),
]


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imports(name: str, path: Path, is_package: bool, known: set[str]) -> set[str]:
    """moaspace modules ``name`` imports, at module level or inside functions."""
    package = name if is_package else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                target = f"{module}.{alias.name}"
                out.add(target if target in known else module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in known and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, pkg, set(modules)) for name, (path, pkg) in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle(graph):
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_check_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _layer(module: str) -> int:
    best, rank = -1, None
    for i, members in enumerate(LAYERS):
        for prefix in members:
            hit = module == prefix or module.startswith(prefix + ".")
            if hit and len(prefix) > best:
                best, rank = len(prefix), i
    return rank


def test_layers_only_look_down(graph):
    upward = []
    for name, targets in graph.items():
        if name == "moaspace":  # the lazy top level names every subpackage, imports none
            continue
        for target in targets:
            if target.startswith("moaspace.pl"):
                continue  # the plots import nothing from moaspace (below): any writer may draw
            if _layer(target) > _layer(name):
                upward.append(f"{name} -> {target}")
    assert not upward, upward


def test_plots_and_core_are_leaves(graph):
    for name, targets in graph.items():
        if name.startswith("moaspace.pl"):
            assert all(t.startswith("moaspace.pl") for t in targets), (name, targets)
        if name.startswith("moaspace._core"):
            assert all(t.startswith("moaspace._core") or t == "moaspace.errors"
                       for t in targets), (name, targets)


def test_no_source_file_over_600_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, long


def _code_lines(node: ast.AST, lines: list[str]) -> int:
    body = node.body
    doc = set()
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        doc = set(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for i in range(node.lineno, node.end_lineno + 1)
               if i not in doc and lines[i - 1].strip()
               and not lines[i - 1].strip().startswith("#"))


def test_no_function_over_80_lines():
    long = {}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if (n := _code_lines(node, lines)) > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}"] = n
    assert not long, long


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_bytes()) <= 8 * 1024


SURFACE = {
    "io": ["read_gctx", "read_siginfo", "read_moa_table", "read_gmt", "write_gctx"],
    "pp": ["prepare", "read_h5ad", "write_h5ad", "split", "cv_folds", "zscore_plate"],
    "datasets": ["simulate", "simulate_adata", "load_demo_paths", "SimulationConfig"],
    "model": ["MoaModel", "ModelConfig"],
    "tl": ["predict", "evaluate", "explain", "gene_importance", "enrich_moas",
           "score_knockdowns"],
    "pl": ["latent_map", "confusion", "nes_heatmap", "knockdown_map", "benchmark_results",
           "reliability_diagram"],
    "benchmark": ["run_benchmark", "make_baseline", "summarize", "paired_differences"],
}


@pytest.mark.parametrize("sub", sorted(SURFACE))
def test_public_surface(sub):
    import moaspace

    module = getattr(moaspace, sub)
    assert module is importlib.import_module(f"moaspace.{sub}")
    for name in SURFACE[sub]:
        assert callable(getattr(module, name)), f"moaspace.{sub}.{name}"
        assert name in module.__all__, f"moaspace.{sub}.__all__ lacks {name}"
    assert moaspace.MoaModel is module.MoaModel if sub == "model" else True


def test_importing_the_plots_leaves_the_backend_alone():
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import moaspace.pl; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "svg"


def _undocumented(obj) -> list[str]:
    """Parameters of ``obj`` (a function, or a class's constructor or dataclass fields) that
    its docstring never names."""
    import inspect

    try:
        params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
    except (TypeError, ValueError):
        return []
    doc = inspect.getdoc(obj) or ""
    return [p for p in params if p not in doc]


def _public_callables():
    import inspect

    for sub in SURFACE:
        module = importlib.import_module(f"moaspace.{sub}")
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                yield f"{sub}.{name}", obj
            elif inspect.isclass(obj):
                yield f"{sub}.{name}", obj
                for attr, value in vars(obj).items():
                    if inspect.isfunction(value) and not attr.startswith("_"):
                        yield f"{sub}.{name}.{attr}", value


def test_every_public_parameter_is_documented():
    missing = {name: gaps for name, obj in _public_callables() if (gaps := _undocumented(obj))}
    assert not missing, missing
    # the check sees a parameter the docstring leaves out
    def documented(alpha, beta):
        """Uses ``alpha``."""
    assert _undocumented(documented) == ["beta"]


def _private_model_names() -> set[str]:
    """Private attributes and methods of ``MoaModel`` (``_x``, not dunders)."""
    tree = ast.parse((PACKAGE / "model" / "model.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MoaModel")
    names = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "self"):
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _private_uses(source: str, private: set[str]) -> list[str]:
    """``obj._name`` accesses of ``private`` names in ``source`` (``self._x`` excluded: an
    object's own state)."""
    return sorted({node.attr for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.Attribute) and node.attr in private
                   and not (isinstance(node.value, ast.Name) and node.value.id == "self")})


def test_no_module_outside_model_uses_a_private_name_of_moamodel():
    private = _private_model_names()
    assert {"_require_net", "_atlas", "_split"} <= private  # the scan sees the class
    inside = PACKAGE / "model"
    outside = {str(p.relative_to(ROOT)): used
               for p in [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
               if inside not in p.parents and (used := _private_uses(p.read_text(), private))}
    assert not outside, outside
    # the check sees a planted use
    assert _private_uses("def f(model):\n    return model._atlas\n", private) == ["_atlas"]
