"""The documents a reader follows next to the paper: every equation number and Step cited in code and docs is defined
in METHOD.md, each equation names functions that exist and cite it back, and every flag a command in the docs shows
is one its script accepts."""
import importlib
import io
import json
import re
import shlex
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
    return sorted([*ROOT.glob("*.py"), *ROOT.glob("runtime/*.py"), *ROOT.glob("benchmarks/*.py")])


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
        obj = resolve(name)
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


def split_name(name: str) -> tuple[str, str]:
    """('runtime.index', 'Index.build') of 'runtime.index.Index.build': the longest importable module, then the rest."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        if (ROOT / (module.replace(".", "/") + ".py")).exists():
            return module, ".".join(parts[i:])
    raise LookupError(f"{name}: no module of the project")


def resolve(name: str):
    """The object a `module.function` name of the docs stands for, or None."""
    try:
        module, qual = split_name(name)
    except LookupError:
        return None
    obj = importlib.import_module(module)
    for a in qual.split("."):
        obj = getattr(obj, a, None)
    return obj


def named_functions() -> set[str]:
    """Every `module.function` METHOD.md names, in equations and Steps alike (the functions a reader follows)."""
    modules = {p.stem for p in ROOT.glob("*.py")} | {"runtime"}
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


SCRIPTS = {"distill.py": None, "evaluate.py": None, "complexity.py": None, "teacher.py": {"train", "score"},
           "student.py": {"index", "search"}, "data.py": {"stats"},
           "benchmarks/throughput.py": {"predictor", "teacher"}, "benchmarks/scale.py": None,
           "benchmarks/gpu_memory.py": None}


def _commands() -> dict[tuple[str, str], set[str]]:
    """{(script, subcommand): flags} of every command line the docs show (`python X.py ...`, `torchrun ... X.py`)."""
    found: dict[tuple[str, str], set[str]] = {}
    for path in _docs():
        text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
        for line in text.splitlines():
            line = re.sub(r"python -m (benchmarks)\.(\w+)", r"python \1/\2.py", line)
            for m in re.finditer(r"\b((?:benchmarks/)?\w+\.py)((?:\s+[^\s`|;]+)*)", line):
                script, rest = m.group(1), m.group(2).split()
                if script not in SCRIPTS or not re.search(r"(python|torchrun)[^`]*\b" + re.escape(script), line):
                    continue
                sub = rest[0] if SCRIPTS[script] and rest and rest[0] in SCRIPTS[script] else ""
                flags = {w.split("=")[0] for w in rest if w.startswith("--")}
                found.setdefault((script, sub), set()).update(flags)
    return found


@pytest.mark.slow
def test_every_flag_in_the_docs_exists():
    """Each `--flag` shown after a script in README / RESULTS / METHOD / docs appears in that script's --help."""
    commands = _commands()
    assert ("distill.py", "") in commands and ("evaluate.py", "") in commands
    missing = []
    for (script, sub), flags in sorted(commands.items()):
        module = ["-m", script[:-3].replace("/", ".")] if "/" in script else [str(ROOT / script)]
        help_text = subprocess.run([sys.executable, *module, *([sub] if sub else []), "--help"],
                                   capture_output=True, text=True, cwd=ROOT, timeout=120).stdout
        missing += [f"{script} {sub} {f}".replace("  ", " ") for f in flags if f not in help_text]
    assert not missing, missing


@pytest.mark.parametrize("path", ["README.md"])
def test_readme_is_a_page(path):
    """The README stays a page a newcomer reads (measurements live in RESULTS.md)."""
    assert len((ROOT / path).read_text(encoding="utf-8").splitlines()) <= 250


# ---------------------------------------------------------------------------- the docs' code snippets, run
def _blocks(lang: str) -> list[tuple[str, str]]:
    """(document name, code) of every ```lang block in README.md and METHOD.md."""
    out = []
    for path in (ROOT / "README.md", ROOT / "METHOD.md"):
        out += [(path.name, m.group(1)) for m in re.finditer(rf"```{lang}\n(.*?)```", path.read_text(encoding="utf-8"),
                                                              re.S)]
    return out


def _command_lines() -> list[tuple[str, list[str]]]:
    """(script, argv) of every `python ...` line of the docs' bash blocks (comments dropped)."""
    out = []
    for _, block in _blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] != ["python"]:
                continue
            if words[1] == "-m":
                out.append((words[2], words[3:]))
            else:
                out.append((words[1][:-3], words[2:]))
    return out


def test_every_shell_snippet_parses(tmp_path, monkeypatch):
    """Every `python ...` line of README.md's and METHOD.md's bash blocks is a literal command its script accepts:
    parsed by the script's own parser and, for the scripts configured by a dataclass, its values checked by that
    config (`__post_init__`), as the command would before doing any work (in a folder where the BEIR set the
    commands train on exists)."""
    import runtime.common as common
    from runtime import search
    lines = _command_lines()
    (tmp_path / "BEIR" / "scifact").mkdir(parents=True)
    (tmp_path / "BEIR" / "scifact" / "corpus.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    assert len(lines) >= 15 and {s for s, _ in lines} >= {"distill", "evaluate", "teacher", "student", "complexity"}
    for script, argv in lines:
        module = importlib.import_module(script.replace("/", "."))
        p = search.parser(module.__doc__) if script == "student" else module.parser()
        try:
            args = p.parse_args(argv)
        except SystemExit as e:
            raise AssertionError(f"python {script} {' '.join(argv)}: refused by its parser") from e
        config = {"distill": "DistillConfig", "evaluate": "EvalConfig", "complexity": "ComplexityConfig"}.get(script)
        if script == "teacher" and args.cmd == "train":
            config = "TrainConfig"
        if config:
            common.config_from_args(getattr(module, config), args, argv)


def test_every_python_snippet_runs(tmp_path, monkeypatch, capsys):
    """Every ```python block of README.md and METHOD.md runs as written, in a folder where its paths exist: a student
    distilled from a tiny random model at runs/distill-virtualhome, a BEIR corpus at DIR/corpus.jsonl."""
    import distill
    from conftest import make_lm, make_tokenizer, patch_llm, write_virtualhome
    from data import load_virtualhome
    blocks = _blocks("python")
    assert blocks, "the README shows the Python API"
    monkeypatch.setenv("RABTRIEVER_CACHE", str(tmp_path / "cache"))
    tok = make_tokenizer()
    patch_llm(monkeypatch, lambda *a, **k: (make_lm(tok), tok))
    root = write_virtualhome(tmp_path, n_programs=10)
    monkeypatch.chdir(tmp_path)
    distill.main(["--data-dir", str(root), "--teacher", "runs/teacher-virtualhome", "--output-dir",
                  "runs/distill-virtualhome", "--rounds", "1", "--k", "2", "--epochs", "2", "--width", "8",
                  "--max-train-queries", "8", "--max-test-queries", "8", "--rerank-k", "4", "--quiet"])
    (tmp_path / "DIR").mkdir()
    corpus = load_virtualhome(root).corpus
    (tmp_path / "DIR" / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": v["text"]}) + "\n"
                                                         for d, v in corpus.items()))
    capsys.readouterr()
    for name, code in blocks:
        exec(compile(code, name, "exec"), {"__name__": "__snippet__"})
    out = capsys.readouterr().out
    assert out.count("(") >= 10 and any(d in out for d in corpus)  # ten (doc id, score) hits of the corpus
