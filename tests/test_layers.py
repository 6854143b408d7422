"""The layers hold: every import goes down the layer drawing of docs/ARCHITECTURE.md, the library
never imports Prefect, and its modules form no import cycle.

All are read from the source (AST), so the test is fast and sees every module, including those
whose optional dependencies (TensorRT) are absent here; a subprocess then imports every module
that can be imported and checks that Prefect never got loaded.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "fp16guard"
#: Top-level packages that are the orchestration layer: only tasks/, flows/ and (lazily, inside
#: functions) the CLI commands that start flows may import them.
ORCHESTRATION = ("prefect", "flows", "tasks")
#: Where a lazy (function-level) import of the orchestration layer is allowed: the CLI commands
#: that start flows, and fp16guard.prefect (forwards ``calibrate_task`` from tasks/ on access).
LAZY_ALLOWED = ("fp16guard.cli.", "fp16guard.prefect")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, *, module_level: bool) -> list[tuple[str, int]]:
    """(imported module, line) of every import in ``path``: only those run when the module is
    imported (module level, ``if``/``try`` blocks included, ``if TYPE_CHECKING`` excluded), or
    every import anywhere with ``module_level=False``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((a.name, node.lineno) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found.append((base, node.lineno))
                found.extend((f"{base}.{a.name}", node.lineno) for a in node.names)  # maybe a submodule
            elif module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            elif module_level and isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse)
            elif module_level and isinstance(node, ast.ClassDef):
                visit(node.body)
            else:
                visit(ast.iter_child_nodes(node))

    visit(tree.body)
    return found


ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"


def _layers(text: str) -> dict[str, int]:
    """unit -> layer number, from the fenced ``layers`` block of docs/ARCHITECTURE.md (one line
    per layer, highest first: ``"3  stats, verify"``). A unit named twice is an error."""
    match = re.search(r"^```layers\n(.*?)^```", text, re.S | re.M)
    assert match, "docs/ARCHITECTURE.md has no ```layers block"
    layers: dict[str, int] = {}
    for line in match.group(1).splitlines():
        if not line.strip():
            continue
        number, _, units = line.strip().partition(" ")
        for unit in (u.strip() for u in units.split(",")):
            assert unit not in layers, f"{unit} stands in two layers"
            layers[unit] = int(number)
    return layers


def _unit(module: str) -> str:
    """The unit of a library module: its sub-package or top-level module (``fp16guard.io.model``
    -> ``io``, ``fp16guard.settings`` -> ``settings``), ``fp16guard`` for the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _resolve(name: str, modules) -> str | None:
    """The library module an imported name loads (``fp16guard.io.model.load_model`` ->
    ``fp16guard.io.model``), None outside the library."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _layer_violations(layers: dict[str, int], imports: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Every import from module A to module B of another unit whose layer is not strictly lower.

    Args:
        layers: unit -> layer number (:func:`_layers`).
        imports: module -> (imported library module, line) pairs.
    """
    bad = []
    for module, found in sorted(imports.items()):
        src = _unit(module)
        for target, line in found:
            dst = _unit(target)
            if dst == src or dst not in layers or src not in layers:
                continue  # unplaced units are reported by test_every_unit_stands_in_one_layer
            if layers[dst] >= layers[src]:
                how = "sideways" if layers[dst] == layers[src] else "upward"
                bad.append(f"{module}:{line} imports {target} ({how}: {src} is layer {layers[src]}, {dst} is layer {layers[dst]})")
    return bad


def _library_imports() -> dict[str, list[tuple[str, int]]]:
    # Every import anywhere in a module: module level, in functions, under TYPE_CHECKING.
    modules = _modules()
    out: dict[str, list[tuple[str, int]]] = {}
    for module, path in modules.items():
        found = {(_resolve(name, modules), line) for name, line in _imports(module, path, module_level=False)}
        out[module] = sorted((m, line) for m, line in found if m)
    return out


def test_layer_checker_finds_upward_and_sideways_imports():
    # The checker itself: a planted upward, sideways and downward import each.
    layers = _layers("```layers\n2  api\n1  io, graph\n0  errors\n```\n")
    assert layers == {"api": 2, "io": 1, "graph": 1, "errors": 0}
    imports = {
        "fp16guard.io.model": [("fp16guard.api.pipeline", 3), ("fp16guard.errors", 4), ("fp16guard.io.atomic", 5)],
        "fp16guard.graph.info": [("fp16guard.io.model", 7)],
        "fp16guard.api.pipeline": [("fp16guard.graph.info", 9)],
    }
    bad = _layer_violations(layers, imports)
    assert bad == [
        "fp16guard.graph.info:7 imports fp16guard.io.model (sideways: graph is layer 1, io is layer 1)",
        "fp16guard.io.model:3 imports fp16guard.api.pipeline (upward: io is layer 1, api is layer 2)",
    ]


def test_every_unit_stands_in_one_layer():
    layers = _layers(ARCHITECTURE.read_text())
    units = {_unit(m) for m in _modules()}
    assert sorted(units - set(layers)) == [], "library units missing from the ```layers block of docs/ARCHITECTURE.md"
    assert sorted(set(layers) - units) == [], "the ```layers block names units the library does not have"


def test_imports_follow_the_layers_of_the_architecture():
    """docs/ARCHITECTURE.md draws the layers; every import of every library module, lazy ones
    included, goes to its own unit or to a lower layer."""
    imports = _library_imports()
    assert sum(len(v) for v in imports.values()) > 300, "the imports must have been read"
    bad = _layer_violations(_layers(ARCHITECTURE.read_text()), imports)
    assert not bad, "imports against the layers of docs/ARCHITECTURE.md:\n" + "\n".join(bad)


def test_library_never_imports_prefect_at_module_level():
    bad = []
    for module, path in _modules().items():
        for name, line in _imports(module, path, module_level=True):
            if name.split(".")[0] in ORCHESTRATION:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not bad, "the library must not import the orchestration layer when imported:\n" + "\n".join(bad)


def test_only_cli_commands_import_prefect_lazily():
    bad = []
    for module, path in _modules().items():
        if module.startswith(LAZY_ALLOWED):
            continue
        for name, line in _imports(module, path, module_level=False):
            if name.split(".")[0] in ORCHESTRATION:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not bad, "only fp16guard.cli may import prefect/flows/tasks, and only inside functions:\n" + "\n".join(bad)


def test_importing_every_library_module_loads_no_prefect():
    code = (
        "import importlib, sys\n"
        f"names = {sorted(_modules())!r}\n"
        "skipped = []\n"
        "for n in names:\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        if exc.name.split('.')[0] == 'fp16guard' or exc.name.split('.')[0] in ('prefect', 'flows', 'tasks'):\n"
        "            raise\n"
        "        skipped.append(f'{n} ({exc.name})')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'flows', 'tasks'))\n"
        "print('SKIPPED', skipped)\n"
        "assert not loaded, loaded[:10]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = len(_modules()) - proc.stdout.count(" (")
    assert imported > 30, proc.stdout  # the check must really have imported the library


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name, _ in _imports(module, path, module_level=True):
            if name in modules and name != module:
                graph[module].add(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
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
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_cycles():
    # The checker itself: a planted cycle is found, a chain is not.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_library_modules():
    graph = _graph()
    assert sum(len(v) for v in graph.values()) > 50, "the import graph must have been read"
    cycles = _cycles(graph)
    assert not cycles, "module-level import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_public_modules_declare_all():
    # Every module of the verify, report and records layers says what it exports, and exports
    # only names it defines or imports.
    missing, unknown = [], []
    for module, path in _modules().items():
        if not module.startswith(("fp16guard.verify", "fp16guard.report", "fp16guard.records")):
            continue
        tree = ast.parse(path.read_text())
        exported = None
        defined: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                exported = ast.literal_eval(node.value)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defined |= {t.id for t in targets if isinstance(t, ast.Name)}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        if exported is None:
            missing.append(module)
            continue
        submodules = {p.stem for p in path.parent.glob("*.py")} if path.name == "__init__.py" else set()
        unknown += [f"{module}.{n}" for n in exported if n not in defined and n not in submodules]
    assert not missing, f"modules without __all__: {missing}"
    assert not unknown, f"__all__ names nothing defined: {unknown}"


def test_cited_facts_live_in_this_repository():
    # Comments cite docs/FACTS.md #n (a fact with its source and date), never notes kept
    # outside the repository; every cited number exists.
    import re

    facts = (REPO / "docs" / "FACTS.md").read_text()
    numbers = {int(n) for n in re.findall(r"(?m)^(\d+)\. \*\*|^(\d+)\. ", facts) for n in n if n}
    outside, dangling = [], []
    for folder in ("fp16guard", "tasks", "flows", "tests", "benchmarks", "docs"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix not in (".py", ".md", ".j2", ".yaml") or path.name == "test_layers.py":
                continue
            text = path.read_text(errors="replace")
            if re.search(r"NOTES #|DESIGN\.md|shared/NOTES", text):
                outside.append(str(path.relative_to(REPO)))
            for cited in re.findall(r"FACTS\.md #(\d+)(?:-(\d+))?", text):
                dangling += [f"{path.relative_to(REPO)}: #{n}" for n in cited if n and int(n) not in numbers]
    assert not outside, f"cite docs/FACTS.md, not notes outside the repository: {outside}"
    assert not dangling, f"citations of facts docs/FACTS.md does not have: {dangling}"
