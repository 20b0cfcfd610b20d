"""Does a change keep the demo's artifacts?  Runs the smoke demo at two commits and compares the run directories.

For each ``BEFORE..AFTER`` pair, each commit is checked out into its own git worktree and the smoke demo
(``python -m alignslm.run --smoke``) runs there cold, with its own empty cache.  Then every file of the two run
directories is compared:

- JSON and JSONL are compared as data, with the keys that hold wall-clock costs or times removed (``*_s``,
  ``seconds``, ``time``, ...: they differ between any two runs);
- markdown and html with their timing phrases masked ("done in 1.2s", "12.3 min");
- everything else (wavs, units, checkpoints, adapters) byte for byte.

``manifest.json`` and each stage's ``.hash`` (stage hashes include the package version, the config sections
and the stage's external inputs) and ``config.yaml`` are reported apart: they record the code and the
config, not what they produced.

    python experiments/smoke_artifacts.py abd157e..3ff1167 2702ea9..265a45c --root /tmp/smoke-cmp
    python experiments/smoke_artifacts.py abd157e..3ff1167 --root /tmp/smoke-cmp --compare-only

Writes ``<root>/<pair>.json`` (per file: same / differs / only in one) and prints a summary per stage
directory.  The findings of a run go in ``experiments/smoke_artifacts.md``.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = re.compile(r"(_s|_sec|seconds|time|elapsed|wall|started|finished|date|created|load|per_s|_per_sec|"
                      r"steps_per_s|tokens_per_s|throughput|host|pid|duration_s)$")
TIMING_TEXT = re.compile(r"\d+(\.\d+)?\s*(s|min|ms|seconds|minutes)\b|\d{4}-\d\d-\d\dT[\d:.]+")
APART = {"manifest.json", "config.yaml", ".hash"}  # what the code and config hash to, not what they produced


def scrub(x):
    """Data without its wall-clock keys (recursively)."""
    if isinstance(x, dict):
        return {k: scrub(v) for k, v in x.items() if not VOLATILE.search(str(k))}
    if isinstance(x, list):
        return [scrub(v) for v in x]
    return x


def digest(path: Path) -> str:
    name = path.name
    if name.endswith(".json"):
        try:
            return hashlib.sha256(json.dumps(scrub(json.loads(path.read_text())), sort_keys=True).encode()).hexdigest()
        except (ValueError, UnicodeDecodeError):
            pass
    if name.endswith(".jsonl"):
        try:
            rows = [scrub(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
            return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
        except (ValueError, UnicodeDecodeError):
            pass
    if name.endswith((".md", ".html", ".log", ".txt")):
        return hashlib.sha256(TIMING_TEXT.sub("<t>", path.read_text(errors="replace")).encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files(run_dir: Path) -> dict[str, Path]:
    return {str(p.relative_to(run_dir)): p for p in sorted(run_dir.rglob("*")) if p.is_file()}


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


def compare(a: Path, b: Path) -> dict:
    fa, fb = files(a), files(b)
    out = {"same": [], "differs": [], "only_before": sorted(set(fa) - set(fb)),
           "only_after": sorted(set(fb) - set(fa)), "apart": []}
    for rel in sorted(set(fa) & set(fb)):
        if Path(rel).name in APART or rel == "smoke.done":
            out["apart"].append(rel)
        elif digest(fa[rel]) == digest(fb[rel]):
            out["same"].append(rel)
        else:
            out["differs"].append(rel)
    return out


def stage_of(rel: str) -> str:
    parts = rel.split("/")
    return "/".join(parts[:2]) if parts[0].startswith("round-") else parts[0]


def summary(res: dict) -> list[str]:
    stages: dict[str, dict[str, int]] = {}
    for kind in ("same", "differs", "only_before", "only_after"):
        for rel in res[kind]:
            stages.setdefault(stage_of(rel), {}).setdefault(kind, 0)
            stages[stage_of(rel)][kind] += 1
    lines = [f"{'stage':<20} same differs only-before only-after"]
    for st, c in sorted(stages.items()):
        lines.append(f"{st:<20} {c.get('same', 0):>4} {c.get('differs', 0):>7} {c.get('only_before', 0):>11} "
                     f"{c.get('only_after', 0):>10}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="+", help="BEFORE..AFTER commit pairs")
    ap.add_argument("--root", type=Path, required=True, help="worktrees, run directories and the comparisons")
    ap.add_argument("--compare-only", action="store_true", help="compare finished run directories only")
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    for pair in args.pairs:
        before, after = pair.split("..")
        dirs = [(args.root / f"run-{c}") if args.compare_only else run_smoke(c, args.root) for c in (before, after)]
        res = compare(*dirs)
        (args.root / f"{before}..{after}.json").write_text(json.dumps(res, indent=1))
        print(f"\n== {pair}: {len(res['same'])} same, {len(res['differs'])} differ, "
              f"{len(res['only_before'])} only before, {len(res['only_after'])} only after")
        print("\n".join(summary(res)))
        for kind in ("differs", "only_before", "only_after"):
            for rel in res[kind]:
                print(f"  {kind}: {rel}")


if __name__ == "__main__":
    main()
