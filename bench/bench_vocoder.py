"""Vocoder benchmarks: intelligibility (Whisper WER) of the demo vocoder, and speed of both vocoders.

    python bench/bench_vocoder.py speed [--quick]              # HiFi-GAN batched vs one-at-a-time, demo speed
    python bench/bench_vocoder.py wer --run-dir RUN [--n 40]   # needs corpus, tokenize and vocoder stages done

WER: held-out (test split) demo utterances; the reference is the manifest text; the same Whisper tiny.en
(alignslm.speech.asr) transcribes the original eSpeak audio, the units vocoded with their true durations, and the
units vocoded with the vocoder's own duration model (what the pipeline does with sampled continuations).
Speed: seconds of audio produced per wall second; providers alternate (harness.time_alternating); the
batched and one-at-a-time outputs are checked to agree before timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import append_rows, print_table, row, time_alternating  # noqa: E402

from alignslm.vocoder import torch_threads  # noqa: E402

# A TWIST/textlesslib-shaped unit HiFi-GAN (50 Hz units, hop 320), random weights; --quick narrows it.
HIFIGAN = {
    "resblock": "1", "upsample_rates": [5, 4, 4, 2, 2], "upsample_kernel_sizes": [11, 8, 8, 4, 4],
    "upsample_initial_channel": 512, "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "num_embeddings": 500, "embedding_dim": 128,
    "model_in_dim": 128, "code_hop_size": 320, "sampling_rate": 16000,
    "dur_predictor_params": {"encoder_embed_dim": 128, "var_pred_hidden_dim": 128, "var_pred_kernel_size": 3,
                             "var_pred_dropout": 0.5},
}


def _units(n: int, lo: int, hi: int, k: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, k, size=int(rng.integers(lo, hi))).tolist() for _ in range(n)]


def _speed_rows(name: str, voc, units: list[list[int]], shape: str, repeats: int) -> list[dict]:
    batched = voc.vocode(units, batch_size=len(units))
    single = [voc.vocode([u], batch_size=1)[0] for u in units]
    worst = max(float(np.abs(b - s).max()) for b, s in zip(batched, single))
    assert worst < 1e-3, f"{name}: batched and one-at-a-time outputs differ by {worst}"
    audio_s = sum(w.size for w in batched) / voc.sample_rate
    import alignslm.vocoder.demo as dm
    import alignslm.vocoder.hifigan as hg

    def padded() -> None:  # every item in one padded batch, whatever the device policy
        keep = hg.CPU_MIN_FILL
        hg.CPU_MIN_FILL = dm.CPU_MIN_FILL = 0.0
        try:
            voc.vocode(units, batch_size=len(units))
        finally:
            hg.CPU_MIN_FILL = dm.CPU_MIN_FILL = keep

    t = time_alternating({
        "batched": lambda: voc.vocode(units, batch_size=len(units)),
        "padded-batch": padded,
        "one-at-a-time": lambda: [voc.vocode([u], batch_size=1) for u in units],
    }, repeats=repeats, warmup=1)
    rate = {k: [audio_s / x for x in v] for k, v in t.items()}
    single = float(np.median(t["one-at-a-time"]))
    return [row(f"vocoder_{name}", k, shape, "audio_s_per_s", "x", rate[k], "one-at-a-time",
                single / float(np.median(t[k]))) for k in ("batched", "padded-batch")] + [
            row(f"vocoder_{name}", "one-at-a-time", shape, "audio_s_per_s", "x", rate["one-at-a-time"])]


def speed(quick: bool, threads: int) -> list[dict]:
    from alignslm.vocoder.hifigan import CodeGenerator, HifiganVocoder

    torch.manual_seed(0)
    cfg = dict(HIFIGAN, upsample_initial_channel=128 if quick else 512)
    model = CodeGenerator(cfg).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, 0.0, 0.05)
    torch.nn.init.constant_(model.dur_predictor.proj.bias, 1.0)  # ~1.7 frames per unit, like deduped HuBERT units
    voc = HifiganVocoder(model)
    rows = []
    with torch_threads(threads):
        units = _units(16, 20, 80, 500)  # 16 continuations of 20-80 deduplicated units
        shape = f"B16 ch{cfg['upsample_initial_channel']} units20-80 thr{threads}"
        rows += _speed_rows("hifigan", voc, units, shape, repeats=3 if quick else 5)
        rows += _demo_speed(quick, threads)
    return rows


def _demo_speed(quick: bool, threads: int) -> list[dict]:
    from alignslm.vocoder.demo import DemoNet, DemoSpec, DemoVocoder

    torch.manual_seed(0)
    spec = DemoSpec(n_units=100, frame_rate=50.0, dim=96, layers=4, kernel=3, mean_durations=[2.0] * 100)
    voc = DemoVocoder(DemoNet(spec))
    units = _units(16, 20, 80, 100, seed=1)
    return _speed_rows("demo", voc, units, f"B16 dim96 gl{spec.gl_iters} units20-80 thr{threads}",
                       repeats=3 if quick else 5)


def wer_bench(run_dir: Path, n: int, beam: int = 5) -> tuple[list[dict], dict]:
    from alignslm.rundir import read_jsonl
    from alignslm.speech.asr import ASR, default_model_dir
    from alignslm.speech.audio import read_audio
    from alignslm.textmetrics import wer
    from alignslm.vocoder import load_vocoder

    manifest = {r["utt_id"]: r for r in read_jsonl(run_dir / "corpus" / "manifest.jsonl")}
    units = [u for u in read_jsonl(run_dir / "tokenize" / "units.jsonl")
             if manifest.get(u["utt_id"], {}).get("split") == "test"][:n]
    encoder = json.loads((run_dir / "tokenize" / "tokenizer.json").read_text()).get("encoder_name", "?")
    voc = load_vocoder(run_dir / "vocoder")
    asr = ASR(default_model_dir(), beam_size=beam)
    refs = [manifest[u["utt_id"]]["text"] for u in units]
    t0 = time.perf_counter()
    w_true = voc.vocode([u["units"] for u in units], [u["durations"] for u in units])
    w_pred = voc.vocode([u["units"] for u in units])
    t_voc = time.perf_counter() - t0
    res = {"original": wer(refs, asr.transcribe([read_audio(manifest[u["utt_id"]]["path"]) for u in units])),
           "vocoded_true_durations": wer(refs, asr.transcribe(w_true)),
           "vocoded_predicted_durations": wer(refs, asr.transcribe(w_pred))}
    dur = getattr(voc, "spec", None) and voc.spec.duration
    shape = f"{len(units)} test utts, beam {beam}, {encoder}, {dur} durations"
    rows = [row("vocoder_wer", k, shape, "wer", "fraction", v) for k, v in res.items()]
    info = {"encoder": encoder, "n": len(units), "vocode_s": round(t_voc, 1),
            "audio_s": round(sum(w.size for w in w_true + w_pred) / voc.sample_rate, 1), **res}
    return rows, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["speed", "wer"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--beam", type=int, default=5, help="ASR beam size (the demo's asr.beam_size)")
    ap.add_argument("--no-csv", action="store_true")
    a = ap.parse_args()
    if a.what == "speed":
        rows = speed(a.quick, a.threads)
    else:
        if a.run_dir is None:
            ap.error("wer needs --run-dir (a run with the corpus, tokenize and vocoder stages done)")
        rows, info = wer_bench(a.run_dir, a.n, a.beam)
        print(json.dumps(info))
    print_table(rows)
    if not a.no_csv:
        append_rows(rows)


if __name__ == "__main__":
    main()
