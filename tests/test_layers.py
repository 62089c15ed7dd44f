"""The layers run one way: the paper's files at the root, the runtime in runtime/ (which imports nothing from the
root), benchmarks in benchmarks/; no import circle among the project's modules, counting imports inside functions,
at any depth; an import inside a function only for an optional or slow third-party module, with a comment."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"teacher", "student", "jepa", "losses", "distill", "policy", "evaluate", "complexity", "data"}
PACKAGES = ("runtime", "benchmarks")


def _modules() -> dict[str, Path]:
    """{dotted module name: file} of every project module (the root's and the packages')."""
    mods = {p.stem: p for p in ROOT.glob("*.py")}
    for pkg in PACKAGES:
        mods |= {f"{pkg}.{p.stem}": p for p in (ROOT / pkg).glob("*.py") if p.stem != "__init__"}
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(project module imported, line, inside a function?) for every import statement of `path`, at any depth."""
    out = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
            for n in names:
                if n in mods:
                    out.append((n, child.lineno, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return out


def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {n for n, _, _ in _imports(p, mods) if n != m} for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), or of one module importing itself."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                strong(w)
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
            if len(comp) > 1 or v in g.get(v, ()):
                out.append(sorted(comp))
    for v in sorted(g):
        if v not in index:
            strong(v)
    return out


def test_cycle_finder_sees_a_circle_through_a_function():
    """The checker itself: a circle of three modules is found, a chain is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circles():
    """No two project modules reach each other through imports, those inside functions included."""
    assert not cycles(graph())


def test_runtime_imports_nothing_from_the_root():
    """runtime/ is below the paper's files: none of its modules imports a root module or a benchmark."""
    g = graph()
    bad = {m: sorted(n for n in deps if not n.startswith("runtime.")) for m, deps in g.items()
           if m.startswith("runtime.")}
    assert not {m: v for m, v in bad.items() if v}


def test_the_root_holds_the_paper():
    """The root holds the design card's files and at most two more; nothing imports a benchmark."""
    root = {p.stem for p in ROOT.glob("*.py")}
    assert PAPER <= root and len(root - PAPER) <= 2, sorted(root - PAPER)
    g = graph()
    assert not [m for m, deps in g.items() if not m.startswith("benchmarks.") and
                any(d.startswith("benchmarks.") for d in deps)]


def test_imports_inside_functions_are_commented_and_third_party():
    """No project module is imported inside a function; a third-party import there (optional or slow to import)
    carries a comment on its line saying why."""
    mods = _modules()
    inner = [f"{p.relative_to(ROOT)}:{line} {n}" for m, p in mods.items() for n, line, f in _imports(p, mods) if f]
    assert not inner
    uncommented = []
    for m, p in mods.items():
        lines = p.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        text = " ".join(lines[node.lineno - 1:node.end_lineno])
                        if "#" not in text:
                            uncommented.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert not uncommented, uncommented
