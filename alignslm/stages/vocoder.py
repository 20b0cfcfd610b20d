"""Stage ``vocoder``: train the demo vocoder on the corpus units, or check a unit HiFi-GAN directory.

Writes ``vocoder.json`` ({"kind", "path", ...}; load with ``alignslm.vocoder.load_vocoder(<this dir>)``).
- ``vocoder.kind=hifigan``: ``vocoder.path`` is loaded strictly (generator.pt + config.json) and its unit
  table is checked against the tokenizer's number of units.
- ``vocoder.kind=demo``: reads ``corpus/manifest.jsonl`` (utt_id, path, split, voice) and
  ``tokenize/units.jsonl`` (+ ``tokenizer.json`` for the frame rate), trains on the train split, picks the
  duration model on the dev split, and saves ``demo.json`` + ``demo.pt`` here.  Utterances whose audio
  cannot be read, or whose units and audio disagree, go to ``rejects.jsonl``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from alignslm import logger
from alignslm.rundir import StageContext, read_jsonl, write_json
from alignslm.speech.audio import SAMPLE_RATE, AudioError, read_audio

if TYPE_CHECKING:
    from alignslm.config import Config

VOCODER_JSON = "vocoder.json"
HELD_OUT = 64  # dev utterances used to choose the duration model


def check(cfg: Config) -> list[str]:
    v = cfg.vocoder
    problems = []
    if v.kind == "hifigan":
        if not v.path:
            problems.append("vocoder.kind=hifigan needs vocoder.path (a directory with generator.pt + config.json)")
        elif Path(v.path).expanduser().exists():  # its existence: alignslm.run.check_paths (the stage graph)
            d = Path(v.path).expanduser()
            for f in ("generator.pt", "config.json"):
                if not (d / f).is_file():
                    problems.append(f"vocoder.path={d}: {f} is missing")
        if v.speaker_embedding and v.speaker is not None:
            problems.append("vocoder.speaker and vocoder.speaker_embedding are both set: set one")
    if v.duration == "exemplar" and v.method != "exemplar":
        problems.append("vocoder.duration=exemplar needs vocoder.method=exemplar")
    if v.bank_utterances < 1 or v.max_match < 1:
        problems.append("vocoder.bank_utterances and vocoder.max_match must be >= 1")
    if v.batch_size < 1 or v.train_batch < 1 or v.steps < 0:
        problems.append("vocoder.batch_size and train_batch must be >= 1, steps >= 0")
    return problems


def _tokenizer_meta(tok_dir: Path) -> dict:
    p = tok_dir / "tokenizer.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: missing; the vocoder stage needs the tokenize stage's tokenizer.json")
    return json.loads(p.read_text())


def run(ctx: StageContext) -> dict:
    v = ctx.cfg.vocoder
    meta = _tokenizer_meta(ctx.inputs["tokenize"])
    if v.kind == "hifigan":
        return _run_hifigan(ctx, meta)
    if v.kind != "demo":
        raise ValueError(f"vocoder.kind={v.kind!r}: choose demo or hifigan")
    return _run_demo(ctx, meta)


def _run_hifigan(ctx: StageContext, meta: dict) -> dict:
    from alignslm.vocoder import speaker_conditioning
    from alignslm.vocoder.hifigan import CheckpointError, HifiganVocoder

    v = ctx.cfg.vocoder
    if not v.path:
        raise CheckpointError("vocoder.kind=hifigan needs vocoder.path (a directory with generator.pt + config.json)")
    path = Path(v.path).expanduser().resolve()
    voc = HifiganVocoder.from_dir(path, speaker=speaker_conditioning(v.speaker, v.speaker_embedding),
                                  batch_size=v.batch_size)
    n_units = int(meta.get("n_units", 0))
    if n_units > voc.n_units:
        raise CheckpointError(f"{path}/config.json: num_embeddings={voc.n_units} but the tokenizer has {n_units} "
                              "units; use the HiFi-GAN trained on this tokenizer's units")
    write_json(ctx.out / VOCODER_JSON, {"kind": "hifigan", "path": str(path), "speaker": v.speaker,
                                        "speaker_embedding": (str(Path(v.speaker_embedding).expanduser().resolve())
                                                              if v.speaker_embedding else None),
                                        "batch_size": v.batch_size, "sample_rate": voc.sample_rate,
                                        "n_units": voc.n_units})
    return {"kind": "hifigan", "n_units": voc.n_units, "sample_rate": voc.sample_rate,
            "duration_predictor": voc.model.dur_predictor is not None}


def load_utterances(ctx: StageContext, frame_rate: float, voices: list[str], split: str, limit: int
                    ) -> list[Any]:
    """Join manifest rows and units of one split into training utterances (audio as int16)."""
    from alignslm.vocoder.demo import Utterance

    manifest = {r["utt_id"]: r for r in read_jsonl(ctx.inputs["corpus"] / "manifest.jsonl")}
    spf = int(round(SAMPLE_RATE / frame_rate))
    out = []
    for u in read_jsonl(ctx.inputs["tokenize"] / "units.jsonl"):
        m = manifest.get(u["utt_id"])
        if m is None or m.get("split", "train") != split or not u.get("units"):
            continue
        if len(out) >= limit:
            break
        if sum(u["durations"]) != u.get("n_frames", sum(u["durations"])) or len(u["durations"]) != len(u["units"]):
            ctx.rejects.add(u["utt_id"], "units and durations disagree with n_frames")
            continue
        try:
            wav = read_audio(ctx.inputs["corpus"] / m["path"], warn=False)
        except AudioError as e:
            ctx.rejects.add(u["utt_id"], f"audio: {e}")
            continue
        n = sum(u["durations"]) * spf
        if abs(wav.size - n) > 2 * spf + 400:  # a frame or two of slack for the encoder's edges
            ctx.rejects.add(u["utt_id"], f"audio has {wav.size} samples but the units cover {n}")
            continue
        wav = np.pad(wav, (0, max(0, n - wav.size)))[:n]
        voice = voices.index(m["voice"]) if m.get("voice") in voices else 0
        out.append(Utterance(list(u["units"]), list(u["durations"]), (wav * 32767).astype(np.int16), voice))
    return out


def _run_demo(ctx: StageContext, meta: dict) -> dict:
    from alignslm.vocoder.demo import DemoSpec, choose_hop, train

    v = ctx.cfg.vocoder
    frame_rate, n_units = float(meta["frame_rate"]), int(meta["n_units"])
    rows = read_jsonl(ctx.inputs["corpus"] / "manifest.jsonl")
    counts = Counter(r.get("voice", "default") for r in rows if r.get("split", "train") == "train")
    voices = sorted(counts) or ["default"]
    voice = v.voice or (counts.most_common(1)[0][0] if counts else voices[0])
    if voice not in voices:
        raise ValueError(f"vocoder.voice={voice!r} is not a corpus voice; choose one of {', '.join(voices)}")
    spec = DemoSpec(n_units=n_units, frame_rate=frame_rate, voices=voices, voice=voice, dim=v.dim, layers=v.layers,
                    kernel=3, hop=choose_hop(SAMPLE_RATE, frame_rate), gl_iters=v.gl_iters,
                    method=v.method, max_match=v.max_match)
    utts = load_utterances(ctx, frame_rate, voices, "train", v.max_train_utterances)
    held = load_utterances(ctx, frame_rate, voices, "dev", HELD_OUT)
    logger.info("vocoder: training the demo vocoder on %d utterances (%.0f s), %d steps", len(utts),
                sum(u.wav.size for u in utts) / SAMPLE_RATE, v.steps)
    voc, summary = train(utts, held, spec, v.steps, lr=v.lr, batch_size=v.train_batch, seed=ctx.seed("train"),
                         duration=v.duration, threads=v.threads, bank_utterances=v.bank_utterances,
                         bank_voice=v.bank_voice)
    voc.batch_size = v.batch_size
    voc.save(ctx.out)
    write_json(ctx.out / VOCODER_JSON, {"kind": "demo", "path": ".", "batch_size": v.batch_size,
                                        "sample_rate": spec.sample_rate, "n_units": n_units, "voice": voice})
    return {"kind": "demo", **summary}
