"""The package's layers (docs/design.md, "Layers"): nothing imports upwards, no import cycle, and no project import
hides inside a function (except in a CLI's ``main``, which imports the heavy modules after the argument parser has
answered, so ``--help`` and usage errors do not wait for JAX)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Bottom to top. A module may import its own layer and the layers below; within a layer, no cycles.
LAYERS = [
    ("base", ["smis_jax", "smis_jax.errors", "smis_jax.config", "smis_jax.files", "smis_jax.interrupt",
              "smis_jax.progress", "smis_jax.viz", "smis_jax.data", "smis_jax.hosts",
              "smis_jax.tblog", "smis_jax.info", "smis_jax.precision"]),
    ("nets", ["smis_jax.nets"]),
    ("io", ["smis_jax.io"]),
    ("method", ["smis_jax.labeling", "smis_jax.labelers", "smis_jax.refine", "smis_jax.optim", "smis_jax.inversion", "smis_jax.training", "smis_jax.metrics",
                "smis_jax.export", "smis_jax.builtin", "smis_jax.experiment", "smis_jax.synthesize",
                "smis_jax.evaluate", "smis_jax.gan", "smis_jax.plots"]),
    ("tools", ["smis_jax.bench", "smis_jax.app", "smis_jax.builtin.sweep"]),
    ("entry", ["train", "convert"]),
]
OURS = ("smis_jax", "train", "convert")


def _modules():
    out = {}
    for top in OURS:
        for path in sorted((REPO / top).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _layer(module: str) -> int:
    best, index = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, index = len(p), i
    assert index is not None, f"{module} is in no layer of tests/test_layers.py (add it, and to docs/design.md)"
    return index


def _imports(module: str, path: Path, known: set[str]):
    """(imported module, line, inside which function or None) for every import of our own modules."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.rsplit(".", child.level - (path.name == "__init__.py"))[0]
                    mod = f"{base}.{child.module}" if child.module else base
                else:
                    mod = child.module or ""
                names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in child.names]
            else:
                visit(child, f)
                continue
            for n in names:
                if n.split(".")[0] in OURS:
                    found.append((n, child.lineno, func))
    visit(tree, None)
    return found


def test_nothing_imports_upwards_or_hides_in_a_function():
    modules = _modules()
    known = set(modules)
    problems = []
    for module, path in modules.items():
        mine = _layer(module)
        for target, line, func in _imports(module, path, known):
            where = f"{path.relative_to(REPO)}:{line}"
            if target not in known:
                problems.append(f"{where}: imports {target}, which does not exist")
                continue
            if _layer(target) > mine:
                problems.append(f"{where}: {module} ({LAYERS[mine][0]}) imports {target} "
                                f"({LAYERS[_layer(target)][0]}), a layer above")
            if func is not None and func != "main":
                problems.append(f"{where}: imports {target} inside {func}()")
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    modules = _modules()
    known = set(modules)
    graph = {m: {t for t, _, _ in _imports(m, p, known) if t in known and t != m} for m, p in modules.items()}
    # A package's __init__ importing its own submodules is not a cycle through the package.
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    state, stack, cycles = {}, [], []

    def dfs(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                dfs(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)
    assert not cycles, "\n".join(cycles)
