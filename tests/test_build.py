"""Build of the C++ extension alignslm._C and the numpy fallback (issue 2, criterion 1).

Fast tier: the implementation switch and the fallback when the extension is missing.
Integration tier, every build the way a user's pip does it (build isolation: setuptools, wheel, pybind11
and cmake come from the package index per pyproject.toml's [build-system], nothing from the test's own
environment): `pip wheel .` gives a platform wheel that installs and imports ``alignslm._C`` in a fresh venv
(no system site-packages; numpy from the index); `pip install -e .` builds it in place;
ALIGNSLM_SKIP_CPP_BUILD=1 and a broken compiler still install (numpy path); ALIGNSLM_FORCE_CPP_BUILD=1
makes the broken build fatal.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

def run_py(code: str, env: dict | None = None, python: str = sys.executable, cwd: Path | None = None):
    e = {**os.environ, **(env or {})}
    return subprocess.run([python, "-c", textwrap.dedent(code)], env=e, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


LOG_AND_REPORT = """
import logging, io
buf = io.StringIO()
logging.basicConfig(stream=buf, level=logging.INFO)
from alignslm.speech import quantizer as q
import numpy as np
X = np.random.default_rng(0).standard_normal((500, 12), dtype=np.float32)
C = X[:7].copy()
print(q.IMPL, q.assign(X, C).sum())
print("LOG", buf.getvalue().count("k-means quantizer:"), buf.getvalue().strip())
"""


def test_numpy_fallback_forced_by_env():
    r = run_py(LOG_AND_REPORT, env={"ALIGNSLM_IMPL": "numpy"}, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    impl, total = r.stdout.split("\n")[0].split()
    assert impl == "numpy"
    assert "LOG 1 " in r.stdout and "numpy path (forced by ALIGNSLM_IMPL)" in r.stdout  # said once
    r2 = run_py(LOG_AND_REPORT, env={"ALIGNSLM_IMPL": ""}, cwd=ROOT)  # the default path (cpp when built)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.split("\n")[0].split()[1] == total  # same units whichever path is taken


def test_fallback_when_extension_missing():
    hide = "import sys; sys.modules['alignslm._C'] = None\n"  # import alignslm._C -> ImportError
    r = run_py(hide + LOG_AND_REPORT, env={"ALIGNSLM_IMPL": ""}, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("numpy ")
    assert "LOG 1 " in r.stdout and "alignslm._C not available" in r.stdout
    r = run_py(hide + "import alignslm.speech.quantizer", env={"ALIGNSLM_IMPL": "cpp"}, cwd=ROOT)
    assert r.returncode != 0 and "kmeans: cpp was asked for (ALIGNSLM_IMPL) but cannot run here: the C++ " \
        "extension alignslm._C is not built" in r.stderr


def test_bad_impl_name_is_rejected():
    r = run_py("import alignslm.speech.quantizer", env={"ALIGNSLM_IMPL": "fortran"}, cwd=ROOT)
    assert r.returncode != 0 and "ALIGNSLM_IMPL='fortran' is not valid: use one of auto, cpp, numpy" in r.stderr


# ----------------------------------------------------------------------------------------- integration
SOURCES = ["pyproject.toml", "setup.py", "CMakeLists.txt", "README.md", "csrc", "alignslm", "kernels"]


def copy_source(dst: Path) -> Path:
    """A clean copy of the project (no built .so, no caches), like a fresh checkout."""
    src = dst / "src"
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info", "build", "runs")
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=ignore)
        elif p.exists():
            shutil.copy2(p, src / name)
    if not (src / "README.md").exists():
        (src / "README.md").write_text("alignslm\n")
    return src


def make_venv(tmp: Path) -> Path:
    """A fresh venv with nothing but pip and numpy (what ``import alignslm.speech.quantizer`` needs)."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "numpy"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return py


def pip(python: Path, *args: str, env: dict | None = None, cwd: Path | None = None, cmd: str = "install"):
    """``pip <cmd> --no-deps`` with build isolation, as a user runs it (build requirements from the index)."""
    return subprocess.run([str(python), "-m", "pip", cmd, "--no-deps", "--disable-pip-version-check", *args],
                          cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=900)


IMPORT_CHECK = """
import alignslm, numpy as np
from alignslm.speech import quantizer as q
ext = q._C.__file__ if q._C is not None else None
X = np.random.default_rng(0).standard_normal((300, 20), dtype=np.float32)
assert (q.assign(X, X[:9].copy()) == q.assign(X, X[:9].copy(), impl="numpy")).all()
print(alignslm.__file__, ext, q.IMPL)
"""


def check_installed(python: Path, tmp: Path, want_ext: bool) -> None:
    r = run_py(IMPORT_CHECK, python=str(python), cwd=tmp, env={"ALIGNSLM_IMPL": "", "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr
    pkg, ext, impl = r.stdout.split()
    assert pkg.startswith(str(tmp)), f"imported {pkg}, not the installed copy under {tmp}"
    if want_ext:
        assert ext.startswith(str(tmp)) and impl == "cpp", r.stdout
    else:
        assert ext == "None" and impl == "numpy", r.stdout


@pytest.mark.integration
def test_wheel_builds_installs_and_imports_in_fresh_venv(tmp_path):
    src = copy_source(tmp_path)
    r = pip(Path(sys.executable), ".", "-w", str(tmp_path / "dist"), cwd=src, cmd="wheel",
            env={"ALIGNSLM_FORCE_CPP_BUILD": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("alignslm-*.whl")
    assert "-py3-none-any" not in wheel.name  # a platform wheel: it carries the extension
    py = make_venv(tmp_path)
    r = pip(py, "--no-index", str(wheel))
    assert r.returncode == 0, r.stderr
    shutil.rmtree(src)  # nothing may come from the source tree
    check_installed(py, tmp_path, want_ext=True)


@pytest.mark.integration
def test_editable_install_builds_extension(tmp_path):
    src = copy_source(tmp_path)
    py = make_venv(tmp_path)
    r = pip(py, "-e", str(src), env={"ALIGNSLM_FORCE_CPP_BUILD": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert list((src / "alignslm").glob("_C*.so")), "editable install did not build alignslm/_C in place"
    check_installed(py, tmp_path, want_ext=True)


@pytest.mark.integration
@pytest.mark.parametrize("env", [{"ALIGNSLM_SKIP_CPP_BUILD": "1"}, {"CXX": "/nonexistent/c++"}], ids=["skip", "no-cxx"])
def test_install_without_extension_falls_back(tmp_path, env):
    src = copy_source(tmp_path)
    py = make_venv(tmp_path)
    r = pip(py, str(src), env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check_installed(py, tmp_path, want_ext=False)


@pytest.mark.integration
def test_force_build_makes_failure_fatal(tmp_path):
    src = copy_source(tmp_path)
    py = make_venv(tmp_path)
    r = pip(py, "-v", str(src), env={"CXX": "/nonexistent/c++", "ALIGNSLM_FORCE_CPP_BUILD": "1"})
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "CMAKE_CXX_COMPILER" in out or "CalledProcessError" in out, out[-3000:]
