"""The whole method end to end at smoke size: every stage, resume after SIGKILL, re-run on config change,
and a 2-process (gloo) run that must produce the same artifacts as the 1-process run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignslm.rundir import read_jsonl

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
# small shards so that a kill lands between shards; frequent checkpoints so a kill lands mid-training
SMOKE = ["--smoke", "--quiet", "sample.shard_size=2", "train.checkpoint_every=2"]
BASE_STAGES = ["corpus", "benchmarks", "tokenize", "unitlm", "vocoder"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


def _run(run_dir: Path, *extra: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "alignslm.run", *SMOKE, f"run.run_dir={run_dir}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)


def _free_port() -> int:
    """A port nobody listens on (a fixed one collides with a concurrent run of this test on the machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stages(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["stages"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    t0 = time.time()
    out = _run(run_dir)
    assert out.returncode == 0, out.stderr[-4000:]
    (run_dir / "elapsed_s").write_text(f"{time.time() - t0:.1f}")
    return run_dir


def test_every_stage_ran_and_artifacts_are_consistent(smoke_run):
    st = _stages(smoke_run)
    expected = BASE_STAGES + [f"round-{r}/{s}" for r in (1, 2)
                              for s in ("sample", "vocode", "transcribe", "judge", "pairs", "train")]
    expected += ["evaluate", "report"]
    assert [k for k in expected if not st.get(k, {}).get("finished")] == []
    samples = read_jsonl(smoke_run / "round-1/sample/samples.jsonl")
    assert len(samples) == 8 * 3  # smoke: 8 prompts x 3 continuations
    assert all(s["prompt"] and isinstance(s["continuation"], list) for s in samples)
    audio = read_jsonl(smoke_run / "round-1/vocode/audio.jsonl")
    rejected = [json.loads(x)["id"] for x in _lines(smoke_run / "round-1/vocode/rejects.jsonl")]
    assert len(audio) + len(rejected) == len(samples)  # nothing silently dropped
    vdir = smoke_run / "round-1/vocode"  # paths are relative to the stage directory (relocatable runs)
    assert all((vdir / a["path"]).exists() and (vdir / a["prompt_path"]).exists() for a in audio)
    pairs = read_jsonl(smoke_run / "round-1/pairs/pairs.jsonl")
    for p in pairs:
        assert {"prompt", "chosen", "rejected", "prompt_id"} <= set(p)
        # rejected scored worse, or was screened out by the signal (no score: it loses by rule), or is a loop
        assert p["chosen_score"] is not None
        better = p["rejected_score"] is None or (p["chosen_score"] < p["rejected_score"] if p["metric"] == "perplexity"
                                                 else p["chosen_score"] > p["rejected_score"])
        assert better or p["rejected_autobleu"] > 0.1
        assert p["chosen_autobleu"] <= 0.1
    assert any((smoke_run / "round-1/train/adapter").glob("*.safetensors"))
    report = (smoke_run / "report/report.md").read_text()
    for row in ("base", "round 1", "round 2"):
        assert row in report.lower()
    # round 2 measured the round-1 policy on its new pairs; generation metrics for the base and the last round
    pairs2 = read_jsonl(smoke_run / "round-2/pairs/pairs.jsonl")
    prior = json.loads((smoke_run / "round-2/train/policy.json").read_text()).get("prior_policy_on_these_pairs")
    if pairs2:  # (a smoke round can end without a pair: then the policy is kept and nothing is measured)
        assert 0.0 <= prior["reward_accuracy"] <= 1.0 and 0 < prior["pairs"] <= len(pairs2)
    models = json.loads((smoke_run / "evaluate/results.json").read_text())["models"]
    assert models["round-1"]["generation"] is None
    assert models["base"]["generation"]["n_continuations"] == models["round-2"]["generation"]["n_continuations"] > 0
    assert "not comparable" in report.lower()


def _lines(p: Path) -> list[str]:
    return [x for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def test_rerun_is_a_noop_and_fast(smoke_run):
    t0 = time.time()
    out = _run(smoke_run)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[ran " not in out.stderr and out.stderr.count("[skip]") >= 19
    assert time.time() - t0 < 60


def test_changed_config_reruns_only_what_it_affects(smoke_run, tmp_path):
    run_dir = tmp_path / "changed"
    shutil.copytree(smoke_run, run_dir)
    out = _run(run_dir, "eval.n_examples=1")
    assert out.returncode == 0, out.stderr[-3000:]
    ran = [line.split()[-1] for line in out.stderr.splitlines() if line.startswith("[ran ")]
    assert ran == ["evaluate", "report"]


def _copy_base(src: Path, dst: Path) -> None:
    """A run directory holding only the shared stages (corpus ... vocoder) of ``src``."""
    dst.mkdir(parents=True)
    for s in BASE_STAGES:
        shutil.copytree(src / s, dst / s)
    m = json.loads((src / "manifest.json").read_text())
    m["stages"] = {k: v for k, v in m["stages"].items() if k in BASE_STAGES}
    (dst / "manifest.json").write_text(json.dumps(m))


def _kill_when(proc: subprocess.Popen, cond, timeout: float = 900) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if cond():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    return False


def _same_adapter(a: Path, b: Path, tol: float = 1e-6) -> None:
    from safetensors.torch import load_file

    fa, fb = sorted(a.glob("*.safetensors")), sorted(b.glob("*.safetensors"))
    assert [f.name for f in fa] == [f.name for f in fb] and fa
    for x, y in zip(fa, fb):
        ta, tb = load_file(x), load_file(y)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert (ta[k] - tb[k]).abs().max().item() <= tol, k


def test_sigkill_during_sampling_and_training_then_resume(smoke_run, tmp_path):
    run_dir = tmp_path / "killed"
    _copy_base(smoke_run, run_dir)
    cmd = [sys.executable, "-m", "alignslm.run", *SMOKE, f"run.run_dir={run_dir}"]
    shards = run_dir / "round-1/sample/shards"
    p = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_when(p, lambda: shards.exists() and len(list(shards.glob("samples*"))) >= 1), "never sampled"
    ckpts = run_dir / "round-1/train"
    p = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_when(p, lambda: any(ckpts.glob("checkpoint*"))), "training never checkpointed"
    out = _run(run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    for r in (1, 2):
        assert read_jsonl(run_dir / f"round-{r}/sample/samples.jsonl") == \
            read_jsonl(smoke_run / f"round-{r}/sample/samples.jsonl")
        assert read_jsonl(run_dir / f"round-{r}/pairs/pairs.jsonl") == \
            read_jsonl(smoke_run / f"round-{r}/pairs/pairs.jsonl")
        _same_adapter(run_dir / f"round-{r}/train/adapter", smoke_run / f"round-{r}/train/adapter")


def test_two_process_gloo_run_matches_one_process(smoke_run, tmp_path):
    run_dir = tmp_path / "ddp"
    _copy_base(smoke_run, run_dir)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "alignslm.run", *SMOKE, f"run.run_dir={run_dir}", "curriculum.rounds=1"]  # the same config
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    for name in ("sample/samples.jsonl", "transcribe/transcripts.jsonl", "pairs/pairs.jsonl"):
        assert read_jsonl(run_dir / "round-1" / name) == read_jsonl(smoke_run / "round-1" / name), name
    # train.batch_size is over all processes (each rank takes half of every micro-batch). DDP averages the
    # ranks' gradients: the same math, another float summation order. Adam moves every weight by about +-lr per
    # step whatever its gradient's size, so an element whose gradient is near zero can land up to lr (5e-4)
    # apart per step; a smoke round trains 1-2 steps from step 1 (no warm-up).
    _same_adapter(run_dir / "round-1/train/adapter", smoke_run / "round-1/train/adapter", tol=1e-3)


# --------------------------------------------------------------------------------------------------
# Out: the aligned model exported, continuations of your own prompts
# --------------------------------------------------------------------------------------------------


def test_export_is_a_plain_transformers_checkpoint_with_the_policy_logprobs(smoke_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from alignslm.export import main as export_main
    from alignslm.lm.unitlm import load_unitlm
    from alignslm.rundir import policy_adapters
    from alignslm.speech.tokenizer import load_tokenizer
    from alignslm.vocoder import load_vocoder

    out = tmp_path / "export"
    assert export_main(["--run-dir", str(smoke_run), "--round", "2", "--out", str(out)]) == 0
    meta = json.loads((out / "alignslm.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert meta["round"] == 2 and cfg["offset"] == meta["offset"] and cfg["n_units"] == meta["n_units"]
    model = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers: no peft, no alignslm
    policy = load_unitlm(smoke_run / "unitlm", adapters=policy_adapters(smoke_run, 2))
    base = load_unitlm(smoke_run / "unitlm")
    seqs = [r["prompt"] + r["continuation"] for r in read_jsonl(smoke_run / "round-2/sample/samples.jsonl")[:4]]
    support = list(range(cfg["offset"], cfg["offset"] + cfg["n_units"])) + [cfg["eos_token_id"]]
    for units, want, other in zip(seqs, policy.score_sequences(seqs), base.score_sequences(seqs)):
        ids = torch.tensor([[cfg["bos_token_id"]] + [u + cfg["offset"] for u in units] + [cfg["eos_token_id"]]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1][:, support]  # (T-1, S): the pipeline's softmax support
        tgt = torch.tensor([support.index(int(t)) for t in ids[0, 1:]])
        got = torch.log_softmax(logits.double(), -1).gather(1, tgt[:, None]).sum().item()
        assert got == pytest.approx(want, abs=1e-3) and abs(want - other) > 1e-4  # the adapter is in there
    # what is needed to tokenize and vocode travels with it
    wav = smoke_run / "corpus" / read_jsonl(smoke_run / "corpus/manifest.jsonl")[0]["path"]  # run-relative
    from alignslm.speech.audio import read_audio

    x = read_audio(wav)
    a = load_tokenizer(out / "tokenizer").encode([x])[0][0]
    b = load_tokenizer(smoke_run / "tokenize").encode([x])[0][0]
    assert a.tolist() == b.tolist() and len(a) > 5
    assert load_vocoder(out / "vocoder").vocode([a.tolist()[:20]])[0].size > 0


def test_generate_speaks_continuations_of_your_prompts(smoke_run, tmp_path):
    from alignslm.generate import main as generate_main

    prompts = sorted((smoke_run / "round-1/vocode/prompt").glob("*.wav"))[:2]
    out = tmp_path / "gen"
    args = ["--run-dir", str(smoke_run), "--out", str(out), "--n", "2", *map(str, prompts)]
    assert generate_main(args) == 0
    rows = read_jsonl(out / "generations.jsonl")
    assert [(r["prompt"], r["k"]) for r in rows] == [(str(p), k) for p in prompts for k in range(2)]
    assert all(r["round"] == 2 for r in rows)
    # a continuation that stopped at once (EOS first) has no wav and says why; every other one has its wav
    assert all((out / r["path"]).is_file() if r["path"] else r["error"].startswith("empty continuation")
               for r in rows)
    assert sum(bool(r["units"]) for r in rows) >= 3 and sum(bool(r["text"].strip()) for r in rows) >= 1
    first = (out / "generations.jsonl").read_text()
    assert generate_main(args) == 0 and (out / "generations.jsonl").read_text() == first  # seeded
    assert generate_main(["--run-dir", str(smoke_run), "--round", "7", "--out", str(out), str(prompts[0])]) == 2
