"""Tiny builders shared by the test modules (a plain module: tests import it, never each other).

- :func:`tiny_llama`: a random LLaMA of a given vocabulary and shape, seeded;
- DPO: :data:`N_UNITS`, :data:`OFFSET`, :func:`tiny_lm` (a UnitLM), :func:`synthetic_pairs`, :func:`train_cfg`;
- unit HiFi-GAN: :data:`TINY_HIFIGAN`, :func:`weight_normed_generator`, :func:`save_hifigan`;
- a llama-cpp-python OpenAI-compatible server on a free port: :func:`free_port`, :func:`start_judge_server`;
- run directories: :func:`assert_same_run` (every artifact equal, JSON/JSONL up to :data:`TIMING_KEYS`).

Fixtures live in conftest.py; the stand-ins in the real checkpoint formats in standins.py.
"""

from __future__ import annotations

import dataclasses
import json
import random
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import torch

# ---------------------------------------------------------------------------------------------- tiny LMs


def tiny_llama(vocab: int, *, seed: int = 0, hidden: int = 32, intermediate: int = 64, layers: int = 2,
               heads: int = 2, kv_heads: int | None = None, max_positions: int = 256, **ids: int):
    """A random ``LlamaForCausalLM`` in eval mode, drawn after ``torch.manual_seed(seed)``; ``ids``: the config's
    ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                      max_position_embeddings=max_positions, **ids)
    return LlamaForCausalLM(cfg).eval()


N_UNITS, OFFSET = 20, 2  # slamkit-style ids: pad=0, bos=eos=1, unit k -> k+2


def tiny_lm(seed: int = 0, extra_vocab: int = 0, support: str = "units"):
    """A UnitLM over :data:`N_UNITS` units on a tiny LLaMA (the DPO tests' model)."""
    from alignslm.lm.unitlm import UnitLM

    model = tiny_llama(OFFSET + N_UNITS + extra_vocab, seed=seed, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return UnitLM(model, offset=OFFSET, n_units=N_UNITS, bos_id=1, eos_id=1, pad_id=0, support=support)


def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """Chosen completions use units 0-9, rejected ones 10-19: a clear, learnable preference."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append({"prompt_id": f"p{i}", "prompt": [rng.randrange(N_UNITS) for _ in range(rng.randint(2, 7))],
                     "chosen": [rng.randrange(10) for _ in range(rng.randint(2, 7))],
                     "rejected": [rng.randrange(10, 20) for _ in range(rng.randint(2, 7))]})
    return rows


def train_cfg(**kw):
    """A small TrainConfig for the tiny LM (fast steps, frequent checkpoints); ``kw`` overrides."""
    from alignslm.config import TrainConfig

    base = dict(lr=5e-3, warmup_steps=2, epochs=2, batch_size=4, lora_r=4, lora_alpha=8, checkpoint_every=2,
                max_length=64)
    return dataclasses.replace(TrainConfig(), **{**base, **kw})


# ---------------------------------------------------------------------------------------------- unit HiFi-GAN

TINY_HIFIGAN = {
    "resblock": "1", "upsample_rates": [2, 2], "upsample_kernel_sizes": [4, 4], "upsample_initial_channel": 16,
    "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "num_embeddings": 20, "embedding_dim": 8, "model_in_dim": 8, "code_hop_size": 4, "sampling_rate": 16000,
    "dur_predictor_params": {"encoder_embed_dim": 8, "var_pred_hidden_dim": 8, "var_pred_kernel_size": 3,
                             "var_pred_dropout": 0.5},
}


def weight_normed_generator(cfg: dict, seed: int = 0, new_api: bool = False):
    """A random-weight CodeGenerator with weight norm applied the way the public training code does."""
    from alignslm.vocoder.hifigan import CodeGenerator

    torch.manual_seed(seed)
    m = CodeGenerator(cfg)
    for p in m.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    if m.dur_predictor is not None:
        torch.nn.init.constant_(m.dur_predictor.proj.bias, 1.2)  # exp(d) - 1 around 2-3 frames per unit
    convs = [m.conv_pre, m.conv_post, *m.ups, *(c for rb in m.resblocks for c in rb.modules()
                                                 if isinstance(c, torch.nn.Conv1d))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in convs:
            if new_api:
                torch.nn.utils.parametrizations.weight_norm(c)
            else:
                torch.nn.utils.weight_norm(c)
    return m.eval()


def save_hifigan(tmp_path: Path, cfg: dict, model: torch.nn.Module, name: str = "hg") -> str:
    """A checkpoint directory in the public layout: config.json + generator.pt {"generator": state_dict}."""
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    torch.save({"generator": model.state_dict()}, d / "generator.pt")
    return str(d)


# ---------------------------------------------------------------------------------------------- judge server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_judge_server(tmp_path: Path, port: int | None = None):
    """llama-cpp-python's OpenAI-compatible server on the demo GGUF judge -> (process, base URL); skips without it."""
    import pytest

    from alignslm.judge import default_judge_model

    pytest.importorskip("llama_cpp", reason="llama-cpp-python[server] is not installed (pip install alignslm[server])")
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python was installed without [server]")
    port = port or free_port()
    # one thread: llama.cpp threads spin at barriers, and on a loaded 2-core machine two spinning threads
    # made a 48-token reply take > 300 s (one thread: ~3 s)
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(default_judge_model()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
                             "--logits_all", "true", "--model_alias", "smollm2"], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/v1"
    t0 = time.time()
    while time.time() - t0 < 180:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                if json.loads(r.read())["data"]:
                    return proc, url
        except OSError:
            time.sleep(1)
    proc.kill()
    pytest.fail("llama_cpp.server did not answer within 180 s")


# ---------------------------------------------------------------------------------------------- run directories

# the documented timing fields inside JSON/JSONL artifacts: the only content that may differ between two runs
TIMING_KEYS = {"seconds", "time", "started", "wall_s", "build_seconds", "fit_s", "encode_s", "quantize_s",
               "audio_s", "x_realtime", "units_per_s", "timing", "score_s", "generation_s", "elapsed_s",
               "tokens_per_s", "steps_per_s", "train_s", "train_seconds", "duration_s", "tts_s", "salmon_s",
               "prosaudit_s", "continuation_only_s", "genppl_s", "tokenize_suites_s", "multispeaker_s"}


def read_16k_mono(path: Path, dtype: str = "float64"):  # noqa: ANN201 - np.ndarray (T,)
    """A wav the demo wrote, asserted to be 16 kHz mono; its samples as ``dtype`` (int16: as stored)."""
    import soundfile as sf

    x, sr = sf.read(path, dtype=dtype)
    assert sr == 16000 and x.ndim == 1, f"{path}: {sr} Hz, shape {x.shape}"
    return x


def manifest_stages(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["stages"]


def recorded_files(run_dir: Path) -> dict[str, list]:
    """run-dir-relative path -> [size, hash] of every file every stage recorded."""
    return {f"{k}/{rel}": v for k, e in manifest_stages(run_dir).items() for rel, v in e.get("files", {}).items()}


def untimed(x):  # noqa: ANN001, ANN201
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in TIMING_KEYS}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x


def _content(path: Path):  # noqa: ANN202
    if path.suffix == ".json":
        return untimed(json.loads(path.read_text()))
    if path.suffix == ".jsonl":
        return [untimed(json.loads(x)) for x in path.read_text().splitlines() if x.strip()]
    return path.read_bytes()


def run_differences(a: Path, b: Path) -> list[str]:
    """What differs between two run directories beyond timings: files one lacks, files whose bytes (or, for
    JSON/JSONL, content without :data:`TIMING_KEYS`) differ, and manifest entries (hash, untimed summary)."""
    fa, fb = recorded_files(a), recorded_files(b)
    out = [f"only in {a}: {k}" for k in sorted(set(fa) - set(fb))]
    out += [f"only in {b}: {k}" for k in sorted(set(fb) - set(fa))]
    for k in sorted(set(fa) & set(fb)):
        if fa[k] != fb[k] and (Path(k).suffix not in (".json", ".jsonl") or _content(a / k) != _content(b / k)):
            out.append(f"differs: {k}")
    ma, mb = manifest_stages(a), manifest_stages(b)
    for k in sorted(set(ma) | set(mb)):
        ea, eb = ma.get(k), mb.get(k)
        if ea is None or eb is None or (ea["hash"], untimed(ea["summary"])) != (eb["hash"], untimed(eb["summary"])):
            out.append(f"manifest entry differs: {k}")
    return out


def assert_same_run(a: Path, b: Path) -> None:
    """Every artifact of ``b`` equals ``a``'s, bit for bit, or (JSON with timings) once timings are removed."""
    diff = run_differences(a, b)
    assert diff == [], "differ beyond timings:\n" + "\n".join(diff)


if __name__ == "__main__":  # python tests/helpers.py RUN_A RUN_B: compare two run directories
    problems = run_differences(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(problems) or "same run: every artifact equal up to timing fields")
    sys.exit(1 if problems else 0)


def signal_rules(**overrides: object):
    """The judge signal's rules as the default config gives them (alignslm.config.JudgeConfig is the one place for
    their defaults), with ``overrides`` of SignalRules fields."""
    from alignslm.config import JudgeConfig
    from alignslm.judge.signal import rules_from

    return dataclasses.replace(rules_from(JudgeConfig()), **overrides)


def pair_rules(**overrides: object):
    """The pair rules as the default config gives them (alignslm.config.PairsConfig is the one place for their
    defaults), with ``overrides`` of PairRules fields."""
    from alignslm.config import PairsConfig
    from alignslm.dpo.pairs import PairRules

    c = PairsConfig()
    return PairRules(**{"mode": c.mode, "chosen_min": c.chosen_min, "rejected_max": c.rejected_max,
                        "all_combinations": c.all_combinations, "autobleu_delta": c.autobleu_delta, **overrides})
