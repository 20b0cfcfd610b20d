"""The package layout (README "## Layout"): every module imports, no import cycle, stages import components and
never another stage, components never import a stage or the driver, and the wheel lists every subpackage."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "alignslm"
KERNELS = ROOT / "kernels"  # installed as alignslm.kernels
CLIS = {"alignslm.run", "alignslm.export", "alignslm.generate", "alignslm.data", "alignslm.seeds"}  # commands
DRIVER = CLIS | {"alignslm.pipeline"}
COMPONENT_PACKAGES = ("speech", "lm", "vocoder", "judge", "dpo", "eval", "demo", "kernels")


def _module_name(path: Path) -> str:
    if path.is_relative_to(KERNELS):
        parts = ["alignslm", "kernels", *path.relative_to(KERNELS).with_suffix("").parts]
    else:
        parts = ["alignslm", *path.relative_to(PKG).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    files = sorted(PKG.rglob("*.py")) + sorted(KERNELS.rglob("*.py"))
    return {_module_name(f): f for f in files}


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every alignslm module ``name`` imports, at the top or inside a function (lazily)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from alignslm.lm import sampler" imports the submodule alignslm.lm.sampler
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # "alignslm.x.attr" -> "alignslm.x"
                t = t.rpartition(".")[0]
            if t.startswith("alignslm") and t != name:
                out.add(t)
    # importing a submodule runs its parent packages' __init__ first; that is not an edge of the graph
    return {t for t in out if not name.startswith(t + ".")}


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_module_imports_in_a_fresh_interpreter():
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    mods = sorted(m for m in MODULES if m != "alignslm._C")
    r = subprocess.run([sys.executable, "-c", code, *mods], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_stages_import_components_never_another_stage():
    bad = {m: sorted(d for d in deps if d.startswith("alignslm.stages.") or d in CLIS)
           for m, deps in GRAPH.items() if m.startswith("alignslm.stages.")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_commands_import_components_never_a_stage():
    """The CLIs (run's dry-run checks, export, generate) call the components' functions, as the stages do; the
    driver reaches stages only through pipeline.STAGES' target strings."""
    bad = {m: sorted(d for d in GRAPH[m] if d.startswith("alignslm.stages")) for m in DRIVER}
    assert {m: d for m, d in bad.items() if d} == {}


def test_components_never_import_a_stage_or_the_driver():
    comps = [m for m in GRAPH if m.split(".")[1:2] and m.split(".")[1] in COMPONENT_PACKAGES]
    assert len(comps) > 20
    bad = {m: sorted(d for d in GRAPH[m] if d.startswith("alignslm.stages") or d in DRIVER) for m in comps}
    assert {m: d for m, d in bad.items() if d} == {}


def test_wheel_lists_every_subpackage():
    text = (ROOT / "pyproject.toml").read_text()  # no tomllib: Python 3.10 is supported
    listed = set(re.findall(r'"([\w.]+)"', re.search(r"^packages = \[(.*?)\]", text, re.M | re.S)[1]))
    on_disk = {_module_name(p) for p in PKG.rglob("__init__.py")} | {"alignslm.kernels"}
    assert listed == on_disk
    assert '"alignslm.kernels" = "kernels"' in text


# Private names the tests still reach, each for a reason (see each entry); anything else is an error, and an
# entry that is no longer used must be removed.
TEST_PRIVATES = {
    "alignslm.lm.sampler._shared_prefix_ok",  # monkeypatched off to force the generic KV-cache decode path
    "alignslm.lm.sampler._generate_batch",  # monkeypatched to count decode calls: a resumed stage redoes none
    "alignslm.lm.sampler._PrefixLayer",  # replaced by a stand-in for a transformers whose cache layer moved
    "alignslm.kernels.sampling._kept_mass",  # the kernel's top-k/top-p mass, checked against the reference
    "alignslm.speech.quantizer._C",  # the C++ extension's own API (kernel selection, assign_dist, threads)
}


def _test_imports(path: Path) -> tuple[set[str], set[str]]:
    """(test modules imported, private alignslm names reached) by one test file."""
    tree = ast.parse(path.read_text(), str(path))
    aliases: dict[str, str] = {}
    tests, privates = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("test_"):
                    tests.add(a.name)
                if a.name.startswith("alignslm"):
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("test_"):
                tests.add(node.module)
            if node.module.startswith("alignslm"):
                for a in node.names:
                    if a.name.startswith("_"):
                        privates.add(f"{node.module}.{a.name}")
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            target = (node.value.id, node.attr)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("setattr", "delattr"):
            args = node.args
            if len(args) >= 2 and isinstance(args[0], ast.Name) and isinstance(args[1], ast.Constant):
                target = (args[0].id, str(args[1].value))
        if target and target[0] in aliases and target[1].startswith("_") and not target[1].startswith("__"):
            privates.add(f"{aliases[target[0]]}.{target[1]}")
    return tests, privates


def test_tests_import_no_test_module_and_only_the_listed_private_names():
    tests, privates = {}, set()
    for f in sorted((ROOT / "tests").glob("*.py")):
        t, p = _test_imports(f)
        if t:
            tests[f.name] = sorted(t)
        privates |= p
    assert tests == {}, "shared builders belong in tests/helpers.py or conftest.py"
    assert privates == TEST_PRIVATES
