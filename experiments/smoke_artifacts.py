"""Does a change keep the demo's artifacts?  Runs the smoke demo at two commits and compares the run directories.

For each ``BEFORE..AFTER`` pair, each commit is checked out into its own git worktree and the smoke demo
(``python -m alignslm.run --smoke``) runs there cold, with its own empty cache.  The two run directories are
then compared by the project's own run comparison (``tests/helpers.py``: :func:`run_differences`, the one the
resume and chaos tests use): every file a stage recorded in the manifest, byte for byte, JSON/JSONL as data
without their timing keys; and each manifest entry (stage hash, untimed summary).  A stage hash includes the
package version, the config sections and the stage's external inputs, so a "manifest entry differs" line
without a "differs: <file>" line under that stage means the same files from a differently hashed stage.

    python experiments/smoke_artifacts.py abd157e..2702ea9 2702ea9..265a45c --root /tmp/smoke-cmp
    python experiments/smoke_artifacts.py abd157e..2702ea9 --root /tmp/smoke-cmp --compare-only

Writes ``<root>/<pair>.json`` (the number of recorded files and the differences) and prints them.  The
findings of a run go in ``experiments/smoke_artifacts.md``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the run-directory comparison of the resume and chaos tests

from helpers import recorded_files, run_differences  # noqa: E402


def run_smoke(commit: str, root: Path) -> Path:
    """The smoke demo at ``commit`` (its own worktree, its own empty cache); returns the run directory."""
    src, run_dir, cache = root / f"src-{commit}", root / f"run-{commit}", root / f"cache-{commit}"
    if (run_dir / "report").is_dir() and (run_dir / "smoke.done").is_file():
        return run_dir
    if not src.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(src), commit], check=True)
        for so in glob.glob(str(ROOT / "alignslm" / "_C*.so")):  # the C++ quantizer built here (optional)
            shutil.copy(so, src / "alignslm")
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.time()
    with open(root / f"run-{commit}.log", "w") as log:
        rc = subprocess.call([sys.executable, "-m", "alignslm.run", "--smoke", f"run.run_dir={run_dir}",
                              f"run.cache_dir={cache}"], cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"{commit}: the smoke demo failed (rc {rc}); see {root / f'run-{commit}.log'}")
    (run_dir / "smoke.done").write_text(f"{time.time() - t0:.1f}\n")
    return run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="+", help="BEFORE..AFTER commit pairs")
    ap.add_argument("--root", type=Path, required=True, help="worktrees, run directories and the comparisons")
    ap.add_argument("--compare-only", action="store_true", help="compare finished run directories only")
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    for pair in args.pairs:
        before, after = pair.split("..")
        a, b = [(args.root / f"run-{c}") if args.compare_only else run_smoke(c, args.root) for c in (before, after)]
        files = sorted(set(recorded_files(a)) | set(recorded_files(b)))
        diffs = run_differences(a, b)
        (args.root / f"{before}..{after}.json").write_text(json.dumps({"files": len(files), "differences": diffs},
                                                                      indent=1))
        n_files = sum(d.startswith(("differs:", "only in")) for d in diffs)
        print(f"\n== {pair}: {len(files)} recorded files, {len(files) - n_files} the same, {n_files} not")
        print("\n".join(f"  {d}" for d in diffs))


if __name__ == "__main__":
    main()
