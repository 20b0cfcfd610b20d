"""The CLI driver: failures keep the run resumable and print the resume command; --stage needs its inputs."""

from __future__ import annotations

import errno
import json

import pytest

import alignslm.pipeline as pl
from alignslm.run import main
from alignslm.rundir import write_jsonl


def ok_stage(ctx) -> dict:
    write_jsonl(ctx.out / "x.jsonl", [{"ok": 1}])
    return {"n": 1}


def full_disk_stage(ctx) -> dict:
    (ctx.out / "partial.bin").write_bytes(b"x")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def toy_pipeline(monkeypatch):
    """Replace the first two stages by toys and stop the plan after them."""
    monkeypatch.setitem(pl.STAGES, "corpus", pl.StageSpec("corpus", f"{__name__}:ok_stage", ("corpus",), ()))
    monkeypatch.setitem(pl.STAGES, "benchmarks",
                        pl.StageSpec("benchmarks", f"{__name__}:full_disk_stage", ("benchmarks",), ()))
    monkeypatch.setattr(pl, "plan", lambda cfg: [pl.Step(pl.STAGES["corpus"], None),
                                                 pl.Step(pl.STAGES["benchmarks"], None)])
    import alignslm.run as run_mod

    monkeypatch.setattr(run_mod, "plan", pl.plan)


def test_stage_failure_is_resumable_and_prints_resume_command(toy_pipeline, tmp_path, capsys):
    argv = [f"run.run_dir={tmp_path}", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    # a full disk is one line naming the path and the bytes free (no traceback)
    assert f"stage benchmarks stopped: no space left on the device writing {tmp_path / 'benchmarks'}:" in err
    assert " free" in err and "Traceback" not in err
    assert "Resume with:" in err and f"python -m alignslm.run run.run_dir={tmp_path} --quiet" in err
    stages = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert stages["corpus"]["finished"] is True
    assert stages["benchmarks"]["finished"] is False  # never marked done
    assert (tmp_path / "config.yaml").exists()


def test_resume_skips_finished_stage(toy_pipeline, tmp_path, capsys, monkeypatch):
    main([f"run.run_dir={tmp_path}", "--quiet"])
    capsys.readouterr()
    monkeypatch.setitem(pl.STAGES, "benchmarks", pl.StageSpec("benchmarks", f"{__name__}:ok_stage",
                                                              ("benchmarks",), ()))
    assert main([f"run.run_dir={tmp_path}", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "[skip] corpus" in err and "[ran ] benchmarks" in err
    assert (tmp_path / "benchmarks" / "x.jsonl").exists()


def test_stage_flag_needs_inputs(tmp_path, capsys):
    assert main([f"run.run_dir={tmp_path}", "--stage", "sample", "--round", "1", "--quiet"]) == 1
    assert "needs corpus" in capsys.readouterr().err


def test_unknown_stage_round(tmp_path, capsys):
    assert main([f"run.run_dir={tmp_path}", "--stage", "sample", "--round", "9"]) == 2
    assert "no such step" in capsys.readouterr().err
