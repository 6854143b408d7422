"""The store's modules import one way (issue 11): no cycle, no reach into private names, and
"is this a URL" decided only in fp16guard.io.urls."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path, package: str) -> set[str]:
    """fp16guard modules imported anywhere in ``path`` (module level or inside functions),
    except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {f for f in found if f.startswith(package)}


def test_store_modules_have_no_import_cycle():
    folder = REPO / "fp16guard" / "store"
    modules = {f"fp16guard.store.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
    graph = {name: _imports(path, "fp16guard.store.") & set(modules) for name, path in modules.items()}

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(graph[n])
        return seen

    cycles = [name for name in graph if name in reach(name)]
    assert not cycles, {n: sorted(graph[n]) for n in cycles}


def test_no_private_reach_into_the_store_and_one_url_rule():
    sources = [p for p in (REPO / "fp16guard").rglob("*.py")] + list((REPO / "tasks").glob("*.py")) + list((REPO / "flows").glob("*.py"))
    offenders = [str(p.relative_to(REPO)) for p in sources if "._run_dir(" in p.read_text()]
    assert not offenders
    url_checks = [
        str(p.relative_to(REPO))
        for p in sources
        if p.name != "urls.py" and re.search(r"""["']://["']\s+(not\s+)?in\b|\.split\(["']://""", p.read_text())
    ]
    assert not url_checks, f"decide URLs with fp16guard.io.urls, not by looking for '://': {url_checks}"
