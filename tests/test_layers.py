"""The package's imports follow the layer order written in docs/ARCHITECTURE.md, with no cycles.

Every import is counted: module level, inside functions, and under `TYPE_CHECKING` (an import hidden
there is still a dependency the code relies on). A module may import from its own layer and below.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zturbo"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
LAYER_LINE = re.compile(r"^\s*(\d+)\.\s+`([^`]+)`")


def layers() -> dict[str, int]:
    """`N. `a, b, c`` lines under the "## Layers" heading: part name → layer number."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    found: dict[str, int] = {}
    for line in section.splitlines():
        if m := LAYER_LINE.match(line):
            for name in m[2].split(","):
                found[name.strip()] = int(m[1])
    return found


def part_of(module: str) -> str:
    """`zturbo.runtime.memory` → `runtime`; `zturbo.cli` → `cli`."""
    return module.split(".")[1] if module.count(".") else module


def imports() -> list[tuple[str, str, int]]:
    """(importing module, imported zturbo module, line) for every import in the package."""
    edges = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            edges += [(module, t, node.lineno) for t in targets if t.startswith("zturbo.")]
    return edges


def test_every_part_has_a_layer():
    order = layers()
    parts = {part_of(".".join(p.relative_to(ROOT).with_suffix("").parts)) for p in PACKAGE.glob("*")}
    parts = {p for p in parts if not p.startswith("__") and p != "zturbo"} | {"__main__"}
    assert not parts - order.keys(), f"parts without a layer in ARCHITECTURE.md: {sorted(parts - order.keys())}"


def test_no_import_runs_up_the_layers():
    order = layers()
    upward = [
        f"{src}:{line} imports {dst} (layer {order[part_of(dst)]} > {order[part_of(src)]})"
        for src, dst, line in imports()
        if part_of(dst) in order and order[part_of(dst)] > order[part_of(src)]
    ]
    assert not upward, "\n".join(upward)


def test_parts_have_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for src, dst, _ in imports():
        a, b = part_of(src), part_of(dst)
        if a != b and b in layers():
            graph.setdefault(a, set()).add(b)

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return [*path, start]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for part in graph if (c := cycle_from(part))]
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)
