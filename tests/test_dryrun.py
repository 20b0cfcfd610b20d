"""``--dry-run`` of the real-model configs against tiny stand-ins built in the real formats: a HuBERT
directory, a k-means .npy, a TWIST-style OPT with config.offset, a unit HiFi-GAN (generator.pt +
config.json), a CTranslate2 Whisper directory, a manifest and the benchmark layouts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from standins import K, build_standins

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> dict[str, str]:
    return build_standins(tmp_path_factory.mktemp("standins"))


class _Models(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint as far as --dry-run looks at it: ``GET /v1/models``."""

    def log_message(self, *a):  # silence http.server
        pass

    def do_GET(self):  # noqa: N802
        data = json.dumps({"object": "list", "data": [{"id": "mistral-7b-instruct", "object": "model"}]}).encode()
        self.send_response(200 if self.path.endswith("/models") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def endpoint():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # nothing listens once the socket is closed


def _dry(config: str, standins: dict, **extra: str) -> subprocess.CompletedProcess:
    over = {k: str(v) for k, v in standins.items() if k != "root"} | extra
    cmd = [sys.executable, "-m", "alignslm.run", "--config", str(ROOT / "configs" / config), "--dry-run",
           f"run.run_dir={standins['root'] / 'run'}", *(f"{k}={v}" for k, v in over.items())]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("config", ["twist-1.3b-librispeech.yaml", "twist-7b-librispeech.yaml"])
def test_real_configs_check_out_against_standins(config, standins, endpoint):
    out = _dry(config, standins, **{"judge.url": endpoint})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all paths and formats check out" in out.stdout
    for step in ("corpus", "tokenize", "round-1/sample", "round-2/train", "evaluate", "report"):
        assert step in out.stdout
    assert "20000 prompts x 5 continuations" in out.stdout


def test_dry_run_checks_layer_context_and_judge_endpoint(standins, endpoint):
    out = _dry("twist-1.3b-librispeech.yaml", standins, **{"judge.url": endpoint, "tokenize.layer": "13"})
    assert out.returncode == 2 and "tokenize.layer=13 but the model has 12 layers" in out.stdout
    # stand-in HuBERT at 25 Hz: a 3 s prompt is up to 76 tokens with BOS; the stand-in TWIST holds 512
    out = _dry("twist-1.3b-librispeech.yaml", standins, **{"judge.url": endpoint, "sample.max_new_units": "437"})
    assert out.returncode == 2 and "make 513 > the LM's context of 512" in out.stdout
    out = _dry("twist-1.3b-librispeech.yaml", standins, **{"judge.url": endpoint, "sample.max_new_units": "436"})
    assert out.returncode == 0, out.stdout
    dead = _dead_url()
    out = _dry("twist-1.3b-librispeech.yaml", standins, **{"judge.url": dead})
    assert out.returncode == 2 and f"judge endpoint {dead} is not reachable" in out.stdout
    assert "all paths and formats check out" not in out.stdout


def test_dry_run_names_mismatched_formats(standins):
    out = _dry("twist-1.3b-librispeech.yaml", standins,
               **{"tokenize.quantizer": str(standins["root"] / "km_wrongdim.npy")})
    assert out.returncode == 2
    assert "dimension 48" in out.stdout and "hidden_size 32" in out.stdout
    out = _dry("twist-1.3b-librispeech.yaml", standins, **{"unitlm.n_units": "30"})
    assert out.returncode == 2 and "unitlm.n_units=30" in out.stdout
    out = _dry("twist-1.3b-librispeech.yaml", standins, **{"vocoder.path": str(standins["root"] / "nothing")})
    assert out.returncode == 2 and "vocoder.path" in out.stdout


# --------------------------------------------------------------------------------------------------
# One function per cross-component check, shared by the stage and --dry-run; a missing path said once
# --------------------------------------------------------------------------------------------------


def _twin_setup(tmp_path: Path, vocab: int = 4 + K, k: int = K):
    """A HuBERT-style config.json (hidden 32), a (k, 48) quantizer, a TWIST-style OPT config, a tokenize dir."""
    from transformers import OPTConfig

    from alignslm.config import load_config

    (tmp_path / "hubert").mkdir()
    (tmp_path / "hubert" / "config.json").write_text(json.dumps({"hidden_size": 32}))
    np.save(tmp_path / "km.npy", np.zeros((k, 48), np.float32))
    opt = OPTConfig(vocab_size=vocab, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                    word_embed_proj_dim=16, bos_token_id=0, pad_token_id=1, eos_token_id=2)
    opt.offset = 4
    opt.save_pretrained(tmp_path / "twist")
    (tmp_path / "tokenize").mkdir()
    (tmp_path / "tokenize" / "tokenizer.json").write_text(json.dumps({"n_units": k}))
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "manifest.jsonl").write_text(json.dumps({"utt_id": "u1", "path": "/nope/u1.wav"}) + "\n")
    return load_config(overrides=["tokenize.encoder=hubert", f"tokenize.encoder_path={tmp_path / 'hubert'}",
                                  f"tokenize.quantizer={tmp_path / 'km.npy'}", f"unitlm.path={tmp_path / 'twist'}",
                                  "run.device=cpu"])


def test_twin_checks_are_one_function_called_by_stage_and_dry_run(tmp_path, monkeypatch):
    from alignslm import run
    from alignslm.lm.unitlm import UnitLMError
    from alignslm.rundir import StageContext
    from alignslm.speech.tokenizer import TokenizerError
    from alignslm.stages import tokenize as st_tok
    from alignslm.stages import unitlm as st_lm

    cfg = _twin_setup(tmp_path, vocab=4 + K - 1)  # one unit too many for the LM's vocabulary
    probs = run.cross_checks(cfg)
    assert len(probs) == 2
    assert "dimension 48 does not match encoder hubert" in probs[0] and "hidden_size 32" in probs[0]
    want = f"offset 4 + n_units {K} - 1 >= vocab_size {K + 3}"
    assert want in probs[1]
    ctx = StageContext(name="unitlm", cfg=cfg, run_dir=tmp_path, out=tmp_path / "unitlm", progress=False,
                       inputs={"tokenize": tmp_path / "tokenize"})
    with pytest.raises(UnitLMError, match=want.replace("+", r"\+")):  # the stage: same condition, same words
        st_lm.run(ctx)
    # both callers go through the one function: change it and both change
    seen = []
    import alignslm.lm.unitlm
    import alignslm.speech.tokenizer

    for mod in (alignslm.speech.tokenizer, st_tok):  # the component's function, where each caller looks it up
        monkeypatch.setattr(mod, "quantizer_dim_problem", lambda *a, **k: seen.append(("dim", a[:2])) or "DIM!")
    for mod in (alignslm.lm.unitlm, st_lm):
        monkeypatch.setattr(mod, "lm_unit_problems", lambda *a, **k: seen.append(("lm", a[0])) or ["LM!"])
    assert run.cross_checks(cfg) == ["DIM!", "LM!"]
    with pytest.raises(UnitLMError, match="^LM!$"):
        st_lm.run(ctx)
    monkeypatch.setattr(st_tok, "build_encoder", lambda *a, **k: type("E", (), {"name": "enc", "dim": 32})())
    tctx = StageContext(name="tokenize", cfg=cfg, run_dir=tmp_path, out=tmp_path / "tok", progress=False,
                        inputs={"corpus": tmp_path / "corpus"})
    with pytest.raises(TokenizerError, match="^DIM!$"):
        st_tok.run(tctx)
    assert seen == [("dim", (48, 32)), ("lm", K), ("lm", K), ("dim", (48, 32))]


def test_dry_run_reports_a_missing_path_once(tmp_path, capsys):
    from alignslm import run
    from alignslm.config import load_config
    from alignslm.pipeline import plan

    paths = {"corpus.manifest": "m.jsonl", "benchmarks.root": "bench", "tokenize.encoder_path": "hub",
             "tokenize.quantizer": "km.npy", "unitlm.path": "lm", "vocoder.path": "hg", "asr.model_path": "asr",
             "judge.model_path": "judge"}
    over = [f"{k}={tmp_path / 'gone' / v}" for k, v in paths.items()]
    cfg = load_config(overrides=[*over, "tokenize.encoder=hubert", "vocoder.kind=hifigan", "judge.backend=transformers",
                                 f"run.run_dir={tmp_path / 'run'}"])
    assert run.dry_run(cfg, plan(cfg)) == 2
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("  - ")]
    for key, v in paths.items():
        said = [x for x in lines if str(tmp_path / "gone" / v) in x]
        assert len(said) == 1 and key in said[0], (key, said)


def test_plan_marks_what_a_changed_config_reruns(tmp_path, capsys):
    """After a finished run, a changed sample section re-runs sample and every stage downstream of it."""
    from alignslm import run
    from alignslm.config import load_config
    from alignslm.pipeline import plan, step_hash, will_run
    from alignslm.rundir import Manifest

    cfg = load_config(overrides=[f"run.run_dir={tmp_path}", "curriculum.rounds=2"])
    man = Manifest(tmp_path)
    for st in plan(cfg):  # as if every stage had finished with this config
        man.mark_done(st.key, step_hash(st, cfg, man), {}, 0.0)
    assert not any(will_run(plan(cfg), cfg, Manifest(tmp_path)))
    changed = load_config(overrides=[f"run.run_dir={tmp_path}", "curriculum.rounds=2", "sample.top_k=10"])
    runs = dict(zip([s.key for s in plan(changed)], will_run(plan(changed), changed, Manifest(tmp_path))))
    assert [k for k, r in runs.items() if not r] == ["corpus", "benchmarks", "tokenize", "unitlm", "vocoder"]
    assert runs["round-1/sample"] and runs["round-2/train"] and runs["evaluate"] and runs["report"]
    run.dry_run(changed, plan(changed))
    out = capsys.readouterr().out
    assert "corpus                 [skip]" in out and "round-1/judge          [run ]" in out
    assert all(will_run(plan(cfg), cfg, Manifest(tmp_path), force=True))


def test_openai_judge_without_url_is_one_message_everywhere(tmp_path, capsys):
    """judge.backend=openai without judge.url: --dry-run says it once (not again as the judge stage's check), the
    run refuses to start with the same words, and building the backend raises them (judge.url_problem)."""
    from alignslm import run
    from alignslm.config import load_config
    from alignslm.judge import load_backend, url_problem
    from alignslm.pipeline import plan

    over = ["judge.backend=openai", f"run.run_dir={tmp_path / 'run'}"]
    cfg = load_config(overrides=over)
    msg = url_problem(cfg.judge)
    assert msg and msg.startswith("judge.url:")
    assert run.dry_run(cfg, plan(cfg)) == 2
    said = [x for x in capsys.readouterr().out.splitlines() if "judge.url" in x]
    assert len(said) == 1 and msg in said[0], said
    assert run.main(over) == 2
    assert msg in capsys.readouterr().err
    with pytest.raises(ValueError, match="judge.url: the openai backend needs an endpoint URL"):
        load_backend(cfg.judge)
