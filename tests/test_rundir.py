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


# --------------------------------------------------------------------------------------------------
# A run directory you can trust: verified artifacts, per-attempt rejects, no leftovers, disk full
# --------------------------------------------------------------------------------------------------


def _toy_steps(monkeypatch, target: str = "toy_stage") -> tuple[Step, Step]:
    import alignslm.pipeline as pl

    spec_a = StageSpec("toy_a", f"{__name__}:{target}", ("sample",), ())
    spec_b = StageSpec("toy_b", f"{__name__}:toy_stage", ("pairs",), ("toy_a",))
    monkeypatch.setitem(pl.STAGES, "toy_a", spec_a)
    monkeypatch.setitem(pl.STAGES, "toy_b", spec_b)
    return Step(spec_a, None), Step(spec_b, None)


@pytest.mark.parametrize("damage", ["truncate_line", "truncate_mid", "delete", "alter"])
def test_damaged_artifact_reruns_its_stage_with_one_line(tmp_path, monkeypatch, caplog, damage):
    a, b = _toy_steps(monkeypatch)
    cfg = load_config()
    for st in (a, b):
        run_step(st, cfg, tmp_path, Manifest(tmp_path), progress=False)
    out = tmp_path / "toy_a" / "out.jsonl"
    good = out.read_text()
    write_jsonl(out, [{"top_k": i} for i in range(3)])  # a longer file, then damaged as the user's were
    Manifest(tmp_path).mark_done("toy_a", Manifest(tmp_path).entry("toy_a")["hash"], {}, 0.0)
    full = out.read_bytes()
    if damage == "truncate_line":
        out.write_bytes(full[:full.index(b"\n") + 1])  # cut at a line boundary: still valid JSONL
    elif damage == "truncate_mid":
        out.write_bytes(full[:len(full) // 2])
    elif damage == "delete":
        out.unlink()
    else:
        out.write_bytes(full.replace(b"0", b"7", 1))  # same size, other content
    CALLS.clear()
    with caplog.at_level("WARNING", logger="alignslm"):
        ran = [run_step(st, cfg, tmp_path, Manifest(tmp_path), progress=False)[0] for st in (a, b)]
    assert ran == [True, False] and CALLS == ["toy_a"]  # the producer re-ran; its consumer's hash is unchanged
    assert out.read_text() == good
    lines = [r.getMessage() for r in caplog.records if "toy_a" in r.getMessage()]
    what = {"truncate_line": "truncated", "truncate_mid": "truncated", "delete": "missing", "alter": "altered"}
    assert len(lines) == 1 and str(out) in lines[0] and what[damage] in lines[0], lines
    assert Manifest(tmp_path).problem("toy_a") is None


def test_damaged_input_of_a_single_stage_reruns_its_producer_first(tmp_path, monkeypatch):
    """``--stage toy_b``: the input it reads is verified first; a damaged one is produced again."""
    a, b = _toy_steps(monkeypatch)
    cfg = load_config()
    for st in (a, b):
        run_step(st, cfg, tmp_path, Manifest(tmp_path), progress=False)
    (tmp_path / "toy_a" / "out.jsonl").unlink()
    CALLS.clear()
    assert run_step(b, cfg, tmp_path, Manifest(tmp_path), force=True, progress=False)[0]
    assert CALLS == ["toy_a", "toy_b"] and (tmp_path / "toy_a" / "out.jsonl").is_file()


SHARD_CALLS: list[list[int]] = []


def sharded_stage(ctx: StageContext) -> dict:
    """Six items in shards of two; an odd item is a reject while ``bad`` exists; ``crash`` stops it after
    the first shard (as a kill would)."""
    def process(chunk: list[int]) -> list[dict]:
        SHARD_CALLS.append(chunk)
        if chunk[0] > 0 and (ctx.run_dir / "crash").exists():
            raise RuntimeError("killed")
        for i in chunk:
            if i % 2 and (ctx.run_dir / "bad").exists():
                ctx.rejects.add(f"item{i}", "bad: cause")
        return [{"i": i} for i in chunk if f"item{i}" not in ctx.rejects]

    rows = run_sharded(ctx, list(range(6)), 2, process, "rows.jsonl")
    return {"rows": len(rows)}


def test_force_redoes_every_shard(tmp_path, monkeypatch):
    a, _ = _toy_steps(monkeypatch, "sharded_stage")
    cfg = load_config()
    SHARD_CALLS.clear()
    run_step(a, cfg, tmp_path, Manifest(tmp_path), progress=False)
    assert len(SHARD_CALLS) == 3
    assert not run_step(a, cfg, tmp_path, Manifest(tmp_path), progress=False)[0]
    assert run_step(a, cfg, tmp_path, Manifest(tmp_path), force=True, progress=False)[0]
    assert len(SHARD_CALLS) == 6  # from scratch, shards included


def test_rejects_belong_to_the_attempt_that_made_them(tmp_path, monkeypatch):
    a, _ = _toy_steps(monkeypatch, "sharded_stage")
    cfg = load_config()
    (tmp_path / "bad").touch()
    (tmp_path / "crash").touch()
    with pytest.raises(RuntimeError, match="killed"):  # shard 0 done (item1 rejected), then a crash
        run_step(a, cfg, tmp_path, Manifest(tmp_path), progress=False)
    (tmp_path / "crash").unlink()
    _, summary = run_step(a, cfg, tmp_path, Manifest(tmp_path), progress=False)
    # shard 0 is reused with its reject; shards 1-2 reject items 3 and 5: each listed once
    assert summary["rejects"] == 3 and summary["rows"] == 3
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "toy_a" / "rejects.jsonl")) == ["item1", "item3", "item5"]
    (tmp_path / "bad").unlink()  # the cause is fixed: a new attempt has no stale rejects
    _, summary = run_step(a, cfg, tmp_path, Manifest(tmp_path), force=True, progress=False)
    assert summary["rejects"] == 0 and summary["rows"] == 6 and not (tmp_path / "toy_a" / "rejects.jsonl").exists()


def test_atomic_files_get_the_umask_mode_and_stale_temps_are_removed(tmp_path):
    from alignslm.rundir import atomic_dir, remove_stale_temps, temp_name

    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        with atomic_dir(tmp_path / "model") as d:
            (d / "w.bin").write_bytes(b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model" / "w.bin").read_bytes() == b"x"
    dead = tmp_path / "sub" / ".x.wav.999999999.abcd.tmp"  # a writer that no longer exists
    dead.parent.mkdir()
    dead.write_text("half")
    mine = temp_name(tmp_path / "sub" / "y.json")  # a writer alive now (this process)
    mine.write_text("half")
    (tmp_path / ".adapter.1.ab.tmp").mkdir()
    assert remove_stale_temps(tmp_path, only_dead=True) == 1 and not dead.exists() and mine.exists()
    assert remove_stale_temps(tmp_path) == 2 and not mine.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "model", "sub", "w.bin"]


def test_disk_full_names_the_path_and_the_bytes_free(tmp_path):
    from alignslm.rundir import DiskFullError, disk_errors

    target = tmp_path / "round-1" / "vocode" / "x.wav"
    with pytest.raises(DiskFullError) as e:
        with disk_errors(target, needed=5000), open("/dev/full", "w") as f:  # a real ENOSPC
            f.write("x" * 10)
            f.flush()
    msg = str(e.value)
    assert str(target) in msg and "free" in msg and "5000 bytes" in msg and "\n" not in msg


def test_not_enough_space_for_a_heavy_stage_is_said_before_it_runs(tmp_path, capsys):
    from alignslm.run import main

    rc = main(["--quiet", "--stage", "corpus", f"run.run_dir={tmp_path / 'run'}", "corpus.n_stories=100000000000"])
    err = capsys.readouterr().err
    assert rc == 1 and f"not enough space on the device for {tmp_path / 'run' / 'corpus'}: " in err
    assert " free, about " in err and " needed." in err
    assert "Traceback" not in err and not (tmp_path / "run" / "corpus").exists()


def test_torch_files_depend_on_their_content_only(tmp_path):
    """torch.save names its archive after the file: through write_torch the temporary name does not leak."""
    import torch

    from alignslm.rundir import write_torch

    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 4, "opt": {"step": 1}}
    loaded = {"w": state["w"], "step": 4, "opt": {"".join(["st", "ep"]): 1}}  # as read back from a checkpoint
    write_torch(tmp_path / "a" / "state.pt", state)
    write_torch(tmp_path / "b" / "state.pt", loaded)
    assert (tmp_path / "a" / "state.pt").read_bytes() == (tmp_path / "b" / "state.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a" / "state.pt", weights_only=True)["w"], state["w"])


@pytest.mark.integration
def test_rerun_on_a_still_full_disk_is_one_clear_line(tmp_path):
    """A run directory on a real, full file system (a 256 KiB tmpfs): the first run and a rerun while it is
    still full each stop with one line naming the path and the bytes free, no traceback."""
    import shutil

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to make a small tmpfs (a real full file system)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        try:  # fill it to the last byte
            with open(mnt / "filler", "wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * 4096)
        except OSError:
            pass
        cmd = [sys.executable, "-m", "alignslm.run", "--smoke", "--quiet", f"run.run_dir={mnt / 'run'}",
               f"run.cache_dir={tmp_path / 'cache'}"]
        for attempt in range(2):  # the first run and a rerun, the disk still full
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            assert out.returncode != 0, attempt
            assert "Traceback" not in out.stderr, out.stderr[-2000:]
            lines = [ln for ln in out.stderr.splitlines() if "free" in ln and str(mnt) in ln]
            assert lines, out.stderr[-2000:]
            assert "Free some space and run the same command again" in out.stderr or "free" in lines[0]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_the_summary_line_keeps_every_cost_after_the_first_items():
    from alignslm.pipeline import summary_line

    summary = {**{f"m{i}": i for i in range(8)}, "salmon_s": 1.5, "note": "x", "genppl_s": 0.25, "nested": {"a": 1}}
    assert summary_line(summary) == ", ".join(f"m{i}={i}" for i in range(8)) + ", salmon_s=1.5, genppl_s=0.25"
