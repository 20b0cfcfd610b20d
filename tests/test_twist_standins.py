"""The TWIST path as a researcher runs it, on tiny random stand-ins in the real formats (tests/standins.py):
``configs/twist-1.3b-librispeech.yaml`` with path overrides, its judge a real llama.cpp server (the demo GGUF
behind llama-cpp-python's OpenAI-compatible server), started only after a first attempt found it down.

The first attempt fails loudly before any work; once the server is up the same command runs every stage
through the report; then the round's policy is exported and speaks continuations of a prompt.
The stand-in models are random, so the numbers mean nothing: what is checked is that every format, path
and hand-over between stages works, and what each stage wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port, start_judge_server
from standins import build_standins

from alignslm.rundir import read_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.server]
ROOT = Path(__file__).resolve().parents[1]


def _cmd(standins: dict, run_dir: Path, url: str) -> list[str]:
    paths = [f"{k}={v}" for k, v in standins.items() if k != "root"]
    small = ["run.device=cpu", "unitlm.dtype=float32", "sample.n_prompts=3", "sample.n_continuations=2",
             "sample.max_new_units=40", "sample.batch_size=4", "tokenize.batch_size=2", "vocoder.batch_size=4",
             "asr.batch_size=4", "judge.concurrency=1", "judge.timeout_s=300", "judge.model_name=smollm2",
             "judge.max_new_tokens=24", "train.batch_size=2", "train.grad_accum=1", "train.warmup_steps=0",
             "train.on_no_pairs=keep_policy", "curriculum.rounds=1", "eval.n_prompts=2", "eval.bootstrap=50",
             "eval.batch_size=4"]
    return [sys.executable, "-m", "alignslm.run", "--config", str(ROOT / "configs/twist-1.3b-librispeech.yaml"),
            "--quiet", f"run.run_dir={run_dir}", f"judge.url={url}", *paths, *small]


def _run(cmd: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_twist_config_on_standins_from_a_down_judge_to_report_export_and_generate(tmp_path):
    standins = build_standins(tmp_path / "standins", speech=True)
    run_dir = tmp_path / "run"
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    cmd = _cmd(standins, run_dir, url)
    dry = _run([*cmd, "--dry-run"])
    assert dry.returncode == 2 and f"judge endpoint {url} is not reachable" in dry.stdout
    down = _run(cmd)  # the judge server is down: one clear message, nothing done, nothing recorded
    assert down.returncode == 2 and "is not reachable" in down.stderr and "Traceback" not in down.stderr
    assert not (run_dir / "manifest.json").exists()
    proc, _ = start_judge_server(tmp_path, port)
    try:
        assert _run([*cmd, "--dry-run"]).returncode == 0
        out = _run(cmd)
    finally:
        proc.terminate()
        proc.wait(30)
    assert out.returncode == 0, out.stderr[-4000:]
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert all(e["finished"] for e in stages.values()) and "report" in stages
    units = read_jsonl(run_dir / "tokenize/units.jsonl")
    assert len(units) == 6 and all(0 <= u < 20 for r in units for u in r["units"])
    samples = read_jsonl(run_dir / "round-1/sample/samples.jsonl")
    assert len(samples) == 6 and all(s["prompt_end_s"] <= 3.0 for s in samples)  # 3 of the 4 train utterances
    word_ends = {w["end"] for r in read_jsonl(run_dir / "corpus/manifest.jsonl") for w in r["words"]}
    # cut at a word end (the manifest's word times)
    assert all(min(abs(s["prompt_end_s"] - e) for e in word_ends) < 1e-3 for s in samples)
    assert (run_dir / "report/report.md").is_file()
    # random stand-ins speak noise: its continuations are "no speech" results (not failures), the judge is
    # asked nothing, no pair is built and the round keeps the base policy (train.on_no_pairs=keep_policy)
    assert stages["round-1/transcribe"]["summary"]["items_failed"] == 0
    judged = stages["round-1/judge"]["summary"]
    assert judged["items_tried"] + judged["rejects"] >= 6  # every continuation judged or rejected with a reason
    # out: the export loads in plain transformers, and the run's policy speaks continuations of a prompt
    from transformers import AutoModelForCausalLM

    from alignslm.export import main as export_main
    from alignslm.generate import main as generate_main

    exp = tmp_path / "export"
    assert export_main(["--run-dir", str(run_dir), "--out", str(exp)]) == 0
    model = AutoModelForCausalLM.from_pretrained(exp)
    assert type(model).__name__ == "OPTForCausalLM" and model.config.offset == 4 and model.config.n_units == 20
    assert json.loads((exp / "alignslm.json").read_text())["round"] == 1  # the last round whose train finished
    gen = tmp_path / "gen"
    prompt = Path(read_jsonl(run_dir / "corpus/manifest.jsonl")[0]["path"])
    assert generate_main(["--run-dir", str(run_dir), "--out", str(gen), "--n", "2", str(prompt)]) == 0
    rows = read_jsonl(gen / "generations.jsonl")
    assert len(rows) == 2 and all(r["prompt_units"] for r in rows)
    # a random stand-in may stop at once (EOS first): that item says why and has no wav; the others have one
    assert all((gen / r["path"]).is_file() if r["path"] else r["error"].startswith("empty continuation")
               for r in rows)
