"""A run directory you can trust, at smoke size (integration tier).

* chaos: a smoke run whose training really updates (lr > 0, LoRA dropout > 0) is SIGKILLed at random
  points, resumed each time, and must equal an uninterrupted run file for file.  What may differ is one
  documented list: timings (helpers.TIMING_KEYS inside the JSON/JSONL files that carry them), nothing else;
* a truncated and a deleted artifact are detected and their stage re-runs, giving the same files;
* a moved run directory resumes (nothing to redo), evaluates and reports identically.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_same_run, manifest_stages

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
# small shards and frequent checkpoints so kills land between shards and mid-training; dropout so that
# training draws random numbers in every round
SMOKE = ["--smoke", "--quiet", "sample.shard_size=2", "train.checkpoint_every=2", "train.lora_dropout=0.1",
         "train.epochs=4", "train.warmup_steps=0"]  # several steps at lr > 0: the adapter really moves
N_KILLS = int(os.environ.get("ALIGNSLM_CHAOS_KILLS", "10"))


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


def _cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "alignslm.run", *SMOKE, f"run.run_dir={run_dir}", *extra]


def _run(run_dir: Path, *extra: str, timeout: float = 2400) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(run_dir, *extra), capture_output=True, text=True, timeout=timeout, env=_env(),
                          cwd=ROOT)


def _assert_trained(run_dir: Path) -> None:
    """Training really updated the policy in every round (LoRA B starts at 0)."""
    from safetensors.torch import load_file

    for r in (1, 2):
        t = load_file(run_dir / f"round-{r}/train/adapter/adapter_model.safetensors")
        assert max(v.abs().max().item() for k, v in t.items() if "lora_B" in k) > 0, f"round {r} did not train"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[Path, float]:
    run_dir = tmp_path_factory.mktemp("chaos") / "clean"
    t0 = time.time()
    out = _run(run_dir)
    assert out.returncode == 0, out.stderr[-4000:]
    return run_dir, time.time() - t0


def _progress(run_dir: Path) -> int:
    """Finished stages plus completed shards and checkpoints: grows as the run gets anywhere."""
    try:
        done = sum(bool(e.get("finished")) for e in manifest_stages(run_dir).values())
    except (FileNotFoundError, json.JSONDecodeError):
        done = 0
    return done * 1000 + sum(1 for _ in run_dir.rglob("shards/*")) + sum(1 for _ in run_dir.rglob("*.pt"))


def test_chaos_sigkills_then_resume_equals_uninterrupted(clean, tmp_path):
    clean_dir, seconds = clean
    run_dir = tmp_path / "killed"
    rng = random.Random(20)
    kills, gap, t_end = 0, seconds / N_KILLS, time.time() + 6 * seconds + 600
    while kills < N_KILLS and time.time() < t_end:
        before = _progress(run_dir)
        p = subprocess.Popen(_cmd(run_dir), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            p.wait(timeout=rng.uniform(0.1, 0.6) * gap + 3.0)  # + the imports before any work
            break  # it finished before the kill: the remaining kills have nothing to hit
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the run and any worker it forked (its own process group)
            p.wait()
            kills += 1
        gap = gap * 2 if _progress(run_dir) == before else seconds / N_KILLS  # a stage longer than the gap
    out = _run(run_dir)
    assert out.returncode == 0, out.stderr[-4000:]
    assert kills == N_KILLS, f"only {kills} kills landed"
    assert not [p for p in run_dir.rglob("*.tmp")], "temporary files left behind"
    assert_same_run(clean_dir, run_dir)
    _assert_trained(run_dir)
    print(f"chaos: {kills} SIGKILLs, resumed run equals the uninterrupted one (clean run {seconds:.0f} s)")


def test_truncated_and_deleted_artifacts_rerun_their_stage(clean, tmp_path):
    clean_dir, _ = clean
    run_dir = tmp_path / "damaged"
    shutil.copytree(clean_dir, run_dir)
    samples = run_dir / "round-1/sample/samples.jsonl"
    data = samples.read_bytes()
    samples.write_bytes(data[:data.index(b"\n", len(data) // 2) + 1])  # cut at a line boundary
    (run_dir / "round-2/pairs/pairs.jsonl").unlink()
    out = _run(run_dir)
    assert out.returncode == 0, out.stderr[-4000:]
    ran = [line.split()[-1] for line in out.stderr.splitlines() if line.startswith("[ran ")]
    assert ran == ["round-1/sample", "round-2/pairs"], out.stderr[-3000:]
    assert f"{samples} is truncated" in out.stderr and "round-2/pairs/pairs.jsonl is missing" in out.stderr
    assert_same_run(clean_dir, run_dir)


def test_moved_run_dir_resumes_evaluates_and_reports_identically(clean, tmp_path):
    clean_dir, _ = clean
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(clean_dir, moved)
    out = _run(moved)
    assert out.returncode == 0 and "[ran " not in out.stderr, out.stderr[-3000:]  # every artifact verifies
    out = _run(moved, "--force", "--stage", "evaluate")
    assert out.returncode == 0, out.stderr[-3000:]
    out = _run(moved, "--force", "--stage", "report")
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_run(clean_dir, moved)
    st = manifest_stages(moved)
    assert all(e["summary"].get("rejects", 0) == manifest_stages(clean_dir)[k]["summary"].get("rejects", 0)
               for k, e in st.items())
    assert str(clean_dir) not in "".join(p.read_text(errors="ignore") for p in moved.rglob("*.json*"))
