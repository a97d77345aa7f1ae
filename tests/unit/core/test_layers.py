"""The package's imports run one way, downwards: no circles between modules, and no module
importing a package of a higher layer (lazy imports inside functions count too). A newcomer
can then read the package bottom-up, and a low module never drags in the config checker or
the workflow's runners."""
import ast
from pathlib import Path

import xaipipe

PACKAGE = Path(xaipipe.__file__).resolve().parent

#: layers from the bottom; a module may import its own package and anything of a lower layer
LAYERS = [
    {"xaipipe", "xaipipe.errors"},
    {"xaipipe.params", "xaipipe.registry", "xaipipe.utils"},
    {"xaipipe.maths", "xaipipe.zarrio", "xaipipe.shards", "xaipipe.parallel", "xaipipe.repro",
     "xaipipe.slurm"},
    {"xaipipe.jobs", "xaipipe.store", "xaipipe.data", "xaipipe.transforms"},
    {"xaipipe.models"},
    {"xaipipe.explain", "xaipipe.metrics"},       # siblings: neither imports the other
    {"xaipipe.report"},
    {"xaipipe.pipeline"},
    {"xaipipe.config"},
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every xaipipe module ``name`` imports, at module level or inside functions."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                full = f"{mod}.{a.name}"
                out.add(full if full in known else mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "xaipipe" or m.startswith("xaipipe.")}


def top(module: str) -> str:
    return ".".join(module.split(".")[:2])


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {i for i in imports(m, p, set(mods)) if i in mods and i != m}
            for m, p in mods.items()}


def test_every_package_has_a_layer():
    missing = sorted({top(m) for m in modules()} - set(RANK))
    assert not missing, f"add these packages to LAYERS: {missing}"


def test_no_module_imports_a_higher_layer_or_a_sibling_package():
    bad = []
    for m, deps in graph().items():
        for d in deps:
            a, b = top(m), top(d)
            if a == b or m == "xaipipe" or b == "xaipipe":
                continue
            if RANK[b] >= RANK[a]:
                bad.append(f"{m} imports {d} (layer {RANK[b]} >= {RANK[a]})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_circles():
    g = graph()
    # a package's __init__ importing its own submodules is how packages export names
    g = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in g.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


def test_the_checker_catches_a_planted_circle(tmp_path, monkeypatch):
    """The analysis itself: a module that imports upward is reported."""
    g = graph()
    assert "xaipipe.maths.objectives" in g
    assert any(d.startswith("xaipipe.maths") for d in g["xaipipe.metrics.perturbation"])
    planted = tmp_path / "planted.py"
    planted.write_text("from ..config import plan\n")
    deps = imports("xaipipe.maths.planted", planted, set(modules()))
    assert "xaipipe.config.plan" in deps and RANK[top("xaipipe.config.plan")] > RANK["xaipipe.maths"]
