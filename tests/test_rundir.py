"""Run directory rules: atomic outputs, resumable shards (SIGKILL halfway), manifest skip/re-run by hash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from alignslm.config import load_config
from alignslm.pipeline import StageSpec, Step, run_step
from alignslm.rundir import (
    Manifest,
    Rejects,
    StageContext,
    atomic_path,
    read_jsonl,
    run_sharded,
    write_json,
    write_jsonl,
)

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}


def test_jsonl_roundtrip_and_corrupt_line_named(tmp_path):
    p = tmp_path / "x.jsonl"
    assert write_jsonl(p, [{"a": i} for i in range(3)]) == 3
    assert read_jsonl(p) == [{"a": 0}, {"a": 1}, {"a": 2}]
    p.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"x.jsonl:2"):
        read_jsonl(p)


def test_rejects_counted(tmp_path):
    r = Rejects(tmp_path / "rejects.jsonl", "tokenize")
    r.add("u1", "corrupt audio: bad header")
    r.add("u2", "corrupt audio: truncated")
    r.add("u3", "silence")
    assert r.summary() == {"rejects": 3, "reject_reasons": {"corrupt audio": 2, "silence": 1}}
    assert [x["id"] for x in read_jsonl(tmp_path / "rejects.jsonl")] == ["u1", "u2", "u3"]


def test_rejects_are_idempotent_per_item_across_reopening(tmp_path):
    """A stage redone after a crash re-rejects the same items: each id is listed (and counted) once."""
    path = tmp_path / "rejects.jsonl"
    r = Rejects(path, "tokenize")
    r.add("u1", "bad audio: corrupt")
    r.add("u1", "bad audio: corrupt")
    assert "u1" in r and r.count == 1
    with open(path, "a") as f:  # the crash cut the next row short
        f.write('{"stage": "tokenize", "id": "u2", "rea')
    again = Rejects(path, "tokenize")  # the resumed attempt
    assert again.summary() == {"rejects": 1, "reject_reasons": {"bad audio": 1}}
    again.add("u1", "bad audio: corrupt")
    again.add("u2", "silence")
    again.add("u3", "too short", path="/x/u3.wav")
    lines = path.read_text().splitlines()
    assert lines[1].startswith('{"stage": "tokenize", "id": "u2", "rea') and not lines[1].endswith("}")
    rows = [json.loads(x) for i, x in enumerate(lines) if i != 1]
    assert [x["id"] for x in rows] == ["u1", "u2", "u3"] and rows[2]["path"] == "/x/u3.wav"
    assert again.summary() == {"rejects": 3, "reject_reasons": {"bad audio": 1, "silence": 1, "too short": 1}}


SHARD_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from alignslm.config import Config
    from alignslm.rundir import StageContext, run_sharded
    out, delay = Path(sys.argv[1]), float(sys.argv[2])
    ctx = StageContext(name="toy", cfg=Config(), run_dir=out.parent, out=out, progress=False)
    def process(chunk):
        time.sleep(delay)
        return [{"i": i, "sq": i * i} for i in chunk]
    run_sharded(ctx, list(range(40)), 4, process, "rows.jsonl")
    print("finished", flush=True)
""")


def _run_shards(out: Path, delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SHARD_SCRIPT, str(out), str(delay)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)


def test_sigkill_halfway_then_resume_equals_uninterrupted(tmp_path):
    killed = tmp_path / "killed" / "toy"
    p = _run_shards(killed, 0.3)
    shard_dir = killed / "shards"
    t0 = time.time()
    while time.time() - t0 < 60:
        if shard_dir.exists() and len([f for f in shard_dir.iterdir() if not f.name.startswith(".")]) >= 3:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = sorted(f.name for f in shard_dir.iterdir() if not f.name.startswith("."))
    assert 3 <= len(done) < 10, done
    assert not (killed / "rows.jsonl").exists()  # no partial final output is visible
    for f in done:  # every visible shard is complete
        assert len(read_jsonl(shard_dir / f)) == 4
    assert _run_shards(killed, 0.0).wait() == 0
    clean = tmp_path / "clean" / "toy"
    assert _run_shards(clean, 0.0).wait() == 0
    assert (killed / "rows.jsonl").read_text() == (clean / "rows.jsonl").read_text()
    assert len(read_jsonl(clean / "rows.jsonl")) == 40


def test_run_sharded_rank_split(tmp_path):
    cfg = load_config()
    seen: list[list[int]] = []

    def process(chunk):
        seen.append(chunk)
        return [{"i": i} for i in chunk]

    # rank 1 of 2 does odd shards only and returns its own rows
    ctx1 = StageContext(name="t", cfg=cfg, run_dir=tmp_path, out=tmp_path / "t", rank=1, world=2, progress=False)
    rows = run_sharded(ctx1, list(range(10)), 3, process, "o.jsonl")
    assert [r["i"] for r in rows] == [3, 4, 5, 9]
    ctx0 = StageContext(name="t", cfg=cfg, run_dir=tmp_path, out=tmp_path / "t", rank=0, world=2, progress=False)
    rows0 = run_sharded(ctx0, list(range(10)), 3, process, "o.jsonl")
    assert [r["i"] for r in rows0] == list(range(10))  # rank 0 merges all shards in order
    assert seen == [[3, 4, 5], [9], [0, 1, 2], [6, 7, 8]]


CALLS: list[str] = []


def toy_stage(ctx: StageContext) -> dict:
    CALLS.append(ctx.name)
    write_jsonl(ctx.out / "out.jsonl", [{"top_k": ctx.cfg.sample.top_k}])
    return {"n": 1}


def test_manifest_skips_same_hash_and_reruns_changed(tmp_path, monkeypatch):
    import alignslm.pipeline as pl

    spec_a = StageSpec("toy_a", f"{__name__}:toy_stage", ("sample",), ())
    spec_b = StageSpec("toy_b", f"{__name__}:toy_stage", ("pairs",), ("toy_a",))
    monkeypatch.setitem(pl.STAGES, "toy_a", spec_a)
    monkeypatch.setitem(pl.STAGES, "toy_b", spec_b)
    CALLS.clear()
    cfg = load_config()
    for st in (Step(spec_a, None), Step(spec_b, None)):
        assert run_step(st, cfg, tmp_path, Manifest(tmp_path), progress=False)[0]
    assert CALLS == ["toy_a", "toy_b"]
    for st in (Step(spec_a, None), Step(spec_b, None)):  # same config: both skipped
        assert not run_step(st, cfg, tmp_path, Manifest(tmp_path), progress=False)[0]
    cfg2 = load_config(None, ["pairs.chosen_min=4"])  # affects toy_b only
    ran = [run_step(st, cfg2, tmp_path, Manifest(tmp_path), progress=False)[0]
           for st in (Step(spec_a, None), Step(spec_b, None))]
    assert ran == [False, True]
    cfg3 = load_config(None, ["sample.top_k=3"])  # affects toy_a, hence toy_b through its hash
    ran = [run_step(st, cfg3, tmp_path, Manifest(tmp_path), progress=False)[0]
           for st in (Step(spec_a, None), Step(spec_b, None))]
    assert ran == [True, True]
    assert read_jsonl(tmp_path / "toy_a" / "out.jsonl") == [{"top_k": 3}]
    m = Manifest(tmp_path).data["stages"]
    assert m["toy_a"]["summary"]["n"] == 1 and m["toy_a"]["summary"]["rejects"] == 0


def test_missing_dependency_is_a_clear_error(tmp_path, monkeypatch):
    import alignslm.pipeline as pl

    spec_b = StageSpec("toy_b", f"{__name__}:toy_stage", ("pairs",), ("toy_a",))
    monkeypatch.setitem(pl.STAGES, "toy_a", StageSpec("toy_a", f"{__name__}:toy_stage", (), ()))
    with pytest.raises(RuntimeError, match="needs toy_a first"):
        run_step(Step(spec_b, None), load_config(), tmp_path, Manifest(tmp_path), progress=False)
