"""The documents a reader follows next to the paper: every equation number and Step cited in code and docs is defined
in METHOD.md, each equation names functions that exist and cite it back, and every flag a command in the docs shows
is one its script accepts."""
import importlib
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
EQ = re.compile(r"(?<![\w.\[])(?<!\d )\(([0-9]|1[0-9]|20)([a-z]?)\)")  # (n), n <= 20, not a count after a number
STEP = re.compile(r"\bStep (\d+)\b")
DEF = re.compile(r"\*\*\((\d{1,2}[a-z]?)\)\*\*")
STEP_DEF = re.compile(r"\*\*Step (\d+)\*\*")
FUNC = re.compile(r"`([a-z_]+\.[A-Za-z_][\w.]*)`")


def _method() -> str:
    return (ROOT / "METHOD.md").read_text(encoding="utf-8")


def _docs() -> list[Path]:
    return [p for p in [ROOT / "README.md", ROOT / "RESULTS.md", ROOT / "METHOD.md", *sorted((ROOT / "docs").glob("*.md"))]
            if p.exists()]


def _sources() -> list[Path]:
    return sorted(ROOT.glob("*.py"))


def _prose(path: Path) -> str:
    """The comments and strings of a Python file (docstrings, help texts, messages): where it cites the method."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING) or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            out.append(tok.string)
    return "\n".join(out)


def _definitions() -> tuple[dict[str, str], set[str]]:
    """{equation number: the METHOD.md text defining it (up to the next definition)}, {step numbers}."""
    text = _method()
    marks = list(DEF.finditer(text))
    eqs = {m.group(1): text[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(text)].split("\n- ")[0]
           for i, m in enumerate(marks)}
    return eqs, set(STEP_DEF.findall(text))


def test_method_defines_each_equation_once_with_its_function():
    """METHOD.md defines (1)-(12) once each; every function an equation names exists, and the first one's docstring
    cites the equation's number, so a reader goes from the equation to the code and back."""
    text = _method()
    numbers = DEF.findall(text)
    assert len(numbers) == len(set(numbers)), "an equation is defined twice"
    eqs, steps = _definitions()
    assert {str(i) for i in range(1, 13)} <= set(eqs) and steps == {str(i) for i in range(8)}
    for n, body in eqs.items():
        _names_resolve_and_first_cites(body, f"({n})")


def _names_resolve_and_first_cites(body: str, label: str) -> None:
    """Every `module.function` in `body` exists, and the first one's docstring cites `label`."""
    names = FUNC.findall(body)
    assert names, f"{label} names no function"
    for i, name in enumerate(names):
        module, *attrs = name.split(".")
        obj = importlib.import_module(module)
        for a in attrs:
            obj = getattr(obj, a, None)
            assert obj is not None, f"{label} names {name}, which does not exist"
        if i == 0:
            assert label in (obj.__doc__ or ""), f"{name} does not cite {label} in its docstring"


def _step_bullets() -> dict[str, str]:
    """{step number: the METHOD.md text of its bullet (up to the next Step or the next line that opens a list)}."""
    text = _method()
    marks = list(STEP_DEF.finditer(text))
    out = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out[m.group(1)] = re.split(r"\n\s*- (?!\*\*Step)|\n## ", text[m.end():end])[0]
    return out


def test_each_step_names_its_functions():
    """Every Step 0-7 bullet of METHOD.md names functions that exist, and the first one's docstring cites that Step,
    so a reader goes from the loop's Step to the code and back."""
    bullets = _step_bullets()
    assert set(bullets) == {str(i) for i in range(8)}
    for n, body in bullets.items():
        _names_resolve_and_first_cites(body, f"Step {n}")


def named_functions() -> set[str]:
    """Every `module.function` METHOD.md names, in equations and Steps alike (the functions a reader follows)."""
    modules = {p.stem for p in _sources()}
    return {n for n in FUNC.findall(_method()) if n.split(".")[0] in modules and not n.endswith(".py")}


def test_every_reference_resolves():
    """Every "(n)" and "Step n" in the code's comments and strings and in the docs is defined in METHOD.md, and every
    *.md a file names is in the repository."""
    eqs, steps = _definitions()
    bad = []
    for path in _sources() + _docs():
        text = _prose(path) if path.suffix == ".py" else path.read_text(encoding="utf-8")
        bad += [f"{path.name}: ({n}{x})" for n, x in EQ.findall(text) if n + x not in eqs]
        bad += [f"{path.name}: Step {n}" for n in STEP.findall(text) if n not in steps]
        for ref in set(re.findall(r"\b((?:docs/)?[A-Z][\w]*\.md)\b", text)):
            if not (ROOT / ref).exists() and not (ROOT / "docs" / ref).exists():
                bad.append(f"{path.name}: {ref} does not exist")
    assert not bad, bad


SCRIPTS = {"distill.py": None, "evaluate.py": None, "complexity.py": None, "teacher.py": {"train", "score", "bench"},
           "student.py": {"index", "search"}, "jepa.py": {"bench"}, "data.py": {"stats"}, "parallel.py": {"memory"}}


def _commands() -> dict[tuple[str, str], set[str]]:
    """{(script, subcommand): flags} of every command line the docs show (`python X.py ...`, `torchrun ... X.py`)."""
    found: dict[tuple[str, str], set[str]] = {}
    for path in _docs():
        text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
        for line in text.splitlines():
            for m in re.finditer(r"\b(\w+\.py)((?:\s+[^\s`|;]+)*)", line):
                script, rest = m.group(1), m.group(2).split()
                if script not in SCRIPTS or not re.search(r"(python|torchrun)[^`]*\b" + re.escape(script), line):
                    continue
                sub = rest[0] if SCRIPTS[script] and rest and rest[0] in SCRIPTS[script] else ""
                flags = {w.split("=")[0] for w in rest if w.startswith("--")}
                found.setdefault((script, sub), set()).update(flags)
    return found


def test_every_flag_in_the_docs_exists():
    """Each `--flag` shown after a script in README / RESULTS / METHOD / docs appears in that script's --help."""
    commands = _commands()
    assert ("distill.py", "") in commands and ("evaluate.py", "") in commands
    missing = []
    for (script, sub), flags in sorted(commands.items()):
        help_text = subprocess.run([sys.executable, str(ROOT / script), *([sub] if sub else []), "--help"],
                                   capture_output=True, text=True, cwd=ROOT, timeout=120).stdout
        missing += [f"{script} {sub} {f}".replace("  ", " ") for f in flags if f not in help_text]
    assert not missing, missing


@pytest.mark.parametrize("path", ["README.md"])
def test_readme_is_a_page(path):
    """The README stays a page a newcomer reads (measurements live in RESULTS.md)."""
    assert len((ROOT / path).read_text(encoding="utf-8").splitlines()) <= 250
