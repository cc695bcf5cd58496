"""The library's layers (README, Architecture): each subpackage imports only the layers
before it, module-level imports form no circle, and nothing imports the Serve
application in serving/ (the pipeline deploys it by import path)."""

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "platform" / "mechinfer"

# rank of each part of the library: a module imports parts of lower rank, or its own part
RANK = {
    "arrays": 0, "config": 0, "storage": 0, "runtime": 0, "machine": 0,
    "solver": 1, "models": 2, "data": 3, "learn": 4, "fit": 4, "estimate": 5,
    "evaluate": 6, "serve": 6, "workflows": 7, "cli": 8,
}  # fmt: skip


def _modules():
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, path.name == "__init__.py"


def _imports(name: str, path: Path, is_package: bool, top_level_only: bool):
    """Absolute names of the mechinfer (and serving) modules a file imports."""
    tree = ast.parse(path.read_text())
    package = name if is_package else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in KNOWN]
            yield from submodules or [module]  # `from pkg import mod` depends on mod, not on pkg


KNOWN = {name for name, _, _ in _modules()}


def _part(module: str) -> str | None:
    bits = module.split(".")
    return bits[1] if bits[0] == "mechinfer" and len(bits) > 1 and bits[1] in RANK else None


def test_every_part_of_the_library_has_a_rank():
    parts = {
        p.stem if p.is_file() else p.name
        for p in LIBRARY.iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.name != "__init__.py"
    }
    assert parts - {"pretrained"} == set(RANK), "add the new module or subpackage to RANK and to the README"


def test_layers_import_only_what_comes_before_them():
    wrong = []
    for name, path, is_package in _modules():
        own = _part(name)
        if own is None:
            continue  # the package's __init__: the public API
        for module in _imports(name, path, is_package, top_level_only=False):
            other = _part(module)
            if other and other != own and RANK[other] >= RANK[own]:
                wrong.append(f"{name} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_library_never_imports_serving():
    wrong = [
        f"{name} imports {module}"
        for name, path, is_package in _modules()
        for module in _imports(name, path, is_package, top_level_only=False)
        if module.split(".")[0] == "serving"
    ]
    assert not wrong, wrong


def test_no_import_circles():
    graph = {}
    for name, path, is_package in _modules():
        graph[name] = {m for m in _imports(name, path, is_package, top_level_only=True) if m in KNOWN and m != name}
    done, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(node) :], node]))
        if node in done:
            return
        stack.append(node)
        for nxt in graph[node]:
            visit(nxt)
        stack.pop()
        done.add(node)

    for node in graph:
        visit(node)
