"""The project's structure: import graph without cycles, every module importable, shared code free of
method names, and packaging that installs every package (method_configs/ included).

The static checks read the source files (``ast`` / ``tokenize``) and import nothing; the last ones run
subprocesses (importing every module, building a wheel).
"""

from __future__ import annotations

import ast
import io
import json
import re
import shutil
import subprocess
import sys
import tokenize
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "segsplat_ns"
PACKAGE_DIR = ROOT / PACKAGE
# method_configs/ sits at the repository root and is installed as segsplat_ns.method_configs
# ([tool.setuptools.package-dir] in pyproject.toml).
METHOD_CONFIGS = f"{PACKAGE}.method_configs"
METHOD_CONFIGS_DIR = ROOT / "method_configs"

# shared code, which must not name or special-case a method
SHARED = [
    "segmenter.py",
    "viewer",
    "cli.py",
    "commands",
    "eval",
    "registry.py",
    "contract.py",
    "pipeline.py",
    "datamanager.py",
    "export.py",
    "decompose.py",
]
METHOD_NAME = re.compile(r"\bsaga\b|binary.gaussian|SAGA|Binary-Gaussian")


# ----------------------------------------------------------------------------------------------
# reading the source tree
# ----------------------------------------------------------------------------------------------


def _python_files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield path


def _module_name(path: Path, base_dir: Path, base_name: str) -> str:
    parts = list(path.relative_to(base_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([base_name, *parts])


def project_modules() -> Dict[str, Path]:
    """Module name -> file, for segsplat_ns and method_configs (as segsplat_ns.method_configs).

    Only modules Python would import: files inside regular packages (an ``__init__.py`` in every folder
    from the top), and a package shadows a module file of the same name, as in Python's own finder.
    """
    modules: Dict[str, Path] = {}
    for base_dir, base_name in ((PACKAGE_DIR, PACKAGE), (METHOD_CONFIGS_DIR, METHOD_CONFIGS)):
        for path in _python_files(base_dir):
            folder = path.parent
            in_packages = all(
                (p / "__init__.py").is_file() for p in [folder, *folder.parents] if p.is_relative_to(base_dir)
            )
            if not in_packages:
                continue
            name = _module_name(path, base_dir, base_name)
            if path.name != "__init__.py" and (path.with_suffix("") / "__init__.py").is_file():
                continue  # shadowed by the package of the same name
            modules[name] = path
    return modules


def _is_package(name: str, modules: Dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    """Every import statement, at module level and inside functions/classes; ``if TYPE_CHECKING:`` bodies are
    skipped unless ``include_type_checking``."""

    def __init__(self, include_type_checking: bool = False) -> None:
        self.include_type_checking = include_type_checking
        self.imports: List[ast.stmt] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test) and not self.include_type_checking:
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.imports.append(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.imports.append(node)


def _resolve_dotted(dotted: str, modules: Dict[str, Path]) -> Optional[str]:
    """The longest prefix of ``dotted`` that is a project module (``import a.b.c`` imports ``a.b.c``)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def project_imports(
    name: str, modules: Dict[str, Path], include_type_checking: bool = False
) -> List[Tuple[str, int]]:
    """The project modules ``name`` imports, with the line of each import statement.

    ``from segsplat_ns.x import y`` is ``segsplat_ns.x.y`` when that is a module, else ``segsplat_ns.x``;
    importing a package is importing its ``__init__``. Relative imports are resolved against ``name``.
    """
    path = modules[name]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    collector = _ImportCollector(include_type_checking)
    collector.visit(tree)
    found: List[Tuple[str, int]] = []
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    for node in collector.imports:
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve_dotted(alias.name, modules)
                if target is not None:
                    found.append((target, node.lineno))
            continue
        if node.level:
            base_parts = package.split(".")
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
            continue
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in modules:
                found.append((submodule, node.lineno))
            else:
                target = _resolve_dotted(base, modules)
                if target is not None:
                    found.append((target, node.lineno))
    return found


def import_graph(modules: Dict[str, Path]) -> Dict[str, Dict[str, int]]:
    """module -> {imported project module -> line of the (first) import}, self-imports left out."""
    graph: Dict[str, Dict[str, int]] = {}
    for name in modules:
        edges: Dict[str, int] = {}
        for target, line in project_imports(name, modules):
            if target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def strongly_connected_components(graph: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """Tarjan's algorithm (iterative); components in no particular order, members sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    on_stack: Set[str] = set()
    stack: List[str] = []
    components: List[List[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _a_cycle(component: List[str], graph: Dict[str, Dict[str, int]]) -> List[str]:
    """One shortest cycle through the component's first member (breadth-first inside the component)."""
    members = set(component)
    start = component[0]
    previous: Dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return component


def _describe_cycle(cycle: List[str], modules: Dict[str, Path], graph: Dict[str, Dict[str, int]]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        steps.append(f"    {a} ({modules[a].relative_to(ROOT)}:{graph[a][b]}) imports {b}")
    return "\n".join(steps)


# ----------------------------------------------------------------------------------------------
# import graph
# ----------------------------------------------------------------------------------------------


def test_module_discovery_sees_the_project():
    modules = project_modules()
    for expected in (PACKAGE, f"{PACKAGE}.errors", f"{PACKAGE}.rendering", METHOD_CONFIGS, f"{METHOD_CONFIGS}.saga"):
        assert expected in modules, expected


def test_import_resolution_rules():
    modules = {
        "segsplat_ns": Path("segsplat_ns/__init__.py"),
        "segsplat_ns.a": Path("segsplat_ns/a/__init__.py"),
        "segsplat_ns.a.b": Path("segsplat_ns/a/b.py"),
        "segsplat_ns.c": Path("segsplat_ns/c.py"),
    }
    graph = {"x": {"y": 1}, "y": {"z": 1}, "z": {"x": 1}, "w": {"x": 1}, "v": {}}
    assert sorted(map(tuple, strongly_connected_components(graph))) == [("v",), ("w",), ("x", "y", "z")]
    assert _a_cycle(["x", "y", "z"], graph) == ["x", "y", "z", "x"]
    assert _resolve_dotted("segsplat_ns.a.b.thing", modules) == "segsplat_ns.a.b"
    assert _resolve_dotted("numpy", modules) is None


def test_import_graph_has_no_cycles():
    modules = project_modules()
    graph = import_graph(modules)
    cycles = [c for c in strongly_connected_components(graph) if len(c) > 1]
    if cycles:
        report = []
        for component in sorted(cycles):
            report.append(f"  {len(component)} modules: {', '.join(component)}\n  e.g.:")
            report.append(_describe_cycle(_a_cycle(component, graph), modules, graph))
        pytest.fail(
            f"{len(cycles)} import cycle(s) among the project's modules (TYPE_CHECKING imports not counted):\n"
            + "\n".join(report)
        )


def test_errors_module_imports_nothing_of_the_project():
    modules = project_modules()
    imported = project_imports(f"{PACKAGE}.errors", modules, include_type_checking=True)
    assert imported == [], f"segsplat_ns/errors.py must be a leaf; it imports {imported}"


# ----------------------------------------------------------------------------------------------
# every module imports
# ----------------------------------------------------------------------------------------------

_IMPORT_ALL = r"""
import importlib, json, pkgutil, traceback
failures = {}
names = []
def walk(package_name):
    try:
        package = importlib.import_module(package_name)
    except Exception as exc:
        failures[package_name] = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return
    names.append(package_name)
    def onerror(name):
        failures[name] = "could not be imported while walking the packages"
    for info in pkgutil.walk_packages(package.__path__, package_name + ".", onerror=onerror):
        names.append(info.name)
walk("segsplat_ns")
walk("segsplat_ns.method_configs")  # mapped from method_configs/, so not under segsplat_ns.__path__ in editable installs
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failures[name] = traceback.format_exception_only(type(exc), exc)[-1].strip()
print(json.dumps({"names": sorted(set(names)), "failures": failures}))
"""


def test_every_module_imports(tmp_path):
    # from a folder outside the repository, so the installed package (and its package-dir mapping) is used
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    failures = result["failures"]
    assert not failures, "modules that do not import:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(failures.items()))
    imported = set(result["names"])
    missing = sorted(set(project_modules()) - imported)
    assert not missing, f"modules in the source tree that the installed package does not provide: {missing}"


# ----------------------------------------------------------------------------------------------
# no method special-casing in shared code
# ----------------------------------------------------------------------------------------------


def _shared_files() -> List[Path]:
    files: List[Path] = []
    for entry in SHARED:
        path = PACKAGE_DIR / entry
        if path.is_dir():
            files.extend(_python_files(path))
        elif path.is_file():
            files.append(path)
    return files


def _docstring_spans(tree: ast.AST) -> List[Tuple[Tuple[int, int], Tuple[int, int]]]:
    """Where the docstrings are: every statement that is a bare string literal (module, class and function
    docstrings, and the attribute docstrings under dataclass fields that tyro turns into ``--help`` text)."""
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            spans.append(((node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset)))
    return spans


def code_tokens(path: Path) -> Iterator[tokenize.TokenInfo]:
    """The file's tokens without comments and docstrings."""
    source = path.read_text(encoding="utf-8")
    spans = _docstring_spans(ast.parse(source, filename=str(path)))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            continue
        if token.type == tokenize.STRING and any(lo <= token.start and token.end <= hi for lo, hi in spans):
            continue
        yield token


def _is_model_expression(node: ast.expr) -> bool:
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", ast.unparse(node))
    return any(n in ("model", "_model") or n.endswith("_model") for n in names)


def method_special_cases() -> List[str]:
    found = []
    for path in _shared_files():
        rel = path.relative_to(ROOT)
        for token in code_tokens(path):
            match = METHOD_NAME.search(token.string)
            if match:
                found.append(f"{rel}:{token.start[0]}: method name {match.group(0)!r} in {token.string.strip()[:80]}")
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and node.args
                and _is_model_expression(node.args[0])
            ):
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)[:100]}")
    return found


def test_special_case_scanner_skips_comments_and_docstrings(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Module docstring naming SAGA."""\n'
        "# a comment about saga\n"
        "def f(model):\n"
        '    """Binary-Gaussian in a docstring."""\n'
        '    levels: int = 3\n'
        '    """SAGA in an attribute docstring."""\n'
        '    name = "saga"\n'
        '    return hasattr(model, "levels"), getattr(self.model, "x", None), getattr(cfg, "y")\n'
    )
    tokens = [t.string for t in code_tokens(sample)]
    assert '"saga"' in tokens
    assert not any("SAGA" in t or "Binary-Gaussian" in t or "comment" in t for t in tokens)
    tree = ast.parse(sample.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    flagged = [ast.unparse(n.args[0]) for n in calls if n.func.id in ("getattr", "hasattr") and
               _is_model_expression(n.args[0])]
    assert flagged == ["model", "self.model"]


def test_no_method_special_casing_in_shared_code():
    found = method_special_cases()
    assert not found, "method names / getattr-hasattr on a model in shared code:\n" + "\n".join(
        f"  {f}" for f in found
    )


# ----------------------------------------------------------------------------------------------
# packaging
# ----------------------------------------------------------------------------------------------


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_is_listed_in_pyproject():
    setuptools_cfg = _pyproject()["tool"]["setuptools"]
    listed = setuptools_cfg["packages"]
    package_dir = setuptools_cfg.get("package-dir", {})
    assert package_dir.get(METHOD_CONFIGS) == "method_configs", package_dir
    assert len(listed) == len(set(listed)), f"packages listed twice: {listed}"

    on_disk = {METHOD_CONFIGS} if (METHOD_CONFIGS_DIR / "__init__.py").is_file() else set()
    without_init = []
    for folder in [PACKAGE_DIR, *sorted(p for p in PACKAGE_DIR.rglob("*") if p.is_dir())]:
        if "__pycache__" in folder.parts:
            continue
        dotted = ".".join([PACKAGE, *folder.relative_to(PACKAGE_DIR).parts])
        if (folder / "__init__.py").is_file():
            on_disk.add(dotted)
        elif any(folder.glob("*.py")):
            without_init.append(str(folder.relative_to(ROOT)))
    missing = sorted(on_disk - set(listed))
    stale = sorted(set(listed) - on_disk)
    assert not missing, f"packages missing from [tool.setuptools] packages in pyproject.toml: {missing}"
    assert not stale, f"[tool.setuptools] packages lists packages that do not exist (the build fails): {stale}"
    assert not without_init, f"folders with Python files but no __init__.py (not installed): {without_init}"
    # a leftover segsplat_ns/method_configs/ folder (even one holding only __pycache__) would be found before the
    # editable install's mapping to method_configs/ and shadow it
    assert not (PACKAGE_DIR / "method_configs").exists(), "remove segsplat_ns/method_configs/: it lives in method_configs/"


def test_entry_points_name_modules_in_method_configs():
    project = _pyproject()["project"]
    entry_points = project["entry-points"]["nerfstudio.method_configs"]
    assert set(entry_points) >= {"saga", "binary-gaussian"}, entry_points
    for name, target in entry_points.items():
        module, _, attribute = target.partition(":")
        assert module.startswith(METHOD_CONFIGS + "."), (name, target)
        path = METHOD_CONFIGS_DIR / (module[len(METHOD_CONFIGS) + 1 :].replace(".", "/") + ".py")
        assert path.is_file(), (name, target, path)
        assert re.search(rf"^{re.escape(attribute)}\s*=", path.read_text(encoding="utf-8"), re.M), (name, target)


def _copy_source_tree(dest: Path) -> Path:
    """pyproject.toml, README.md and the packages' folders, so the build leaves nothing in the repository."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(PACKAGE_DIR, dest / PACKAGE, ignore=ignore)
    shutil.copytree(METHOD_CONFIGS_DIR, dest / "method_configs", ignore=ignore)
    return dest


def test_wheel_contains_method_configs_and_entry_points(tmp_path):
    source = _copy_source_tree(tmp_path / "src")
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = list(out.glob("segsplat_ns-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        entry_points_file = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = wheel.read(entry_points_file).decode()
    for module in ("__init__", "common", "saga", "binary_gaussian"):
        assert f"segsplat_ns/method_configs/{module}.py" in names, sorted(names)
    expected_files = {
        f"segsplat_ns/{p.relative_to(PACKAGE_DIR).as_posix()}" for p in project_modules().values()
        if p.is_relative_to(PACKAGE_DIR)
    } | {
        f"segsplat_ns/method_configs/{p.relative_to(METHOD_CONFIGS_DIR).as_posix()}"
        for p in project_modules().values() if p.is_relative_to(METHOD_CONFIGS_DIR)
    }
    assert not sorted(expected_files - names), f"modules missing from the wheel: {sorted(expected_files - names)}"
    sections: Dict[str, Set[str]] = defaultdict(set)
    section = ""
    for line in entry_points.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            sections[section].add(line.replace(" ", ""))
    assert "saga=segsplat_ns.method_configs.saga:saga_method" in sections["nerfstudio.method_configs"], entry_points
    assert (
        "binary-gaussian=segsplat_ns.method_configs.binary_gaussian:binary_gaussian_method"
        in sections["nerfstudio.method_configs"]
    ), entry_points
    assert "segsplat=segsplat_ns.cli:entrypoint" in sections["console_scripts"], entry_points
