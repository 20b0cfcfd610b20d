"""Audio I/O shared by every stage: read any wav/flac as 16 kHz mono float32, write wavs atomically.

Bad audio raises :class:`AudioError` naming the file and the problem; stages catch it and record a reject.
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

from alignslm import logger
from alignslm.rundir import atomic_path

SAMPLE_RATE = 16_000


class AudioError(ValueError):
    """Audio that cannot be used; ``str(e)`` names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def resample(x: np.ndarray, sr_from: int, sr_to: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling, (T,) float32 -> (T * sr_to / sr_from,) float32."""
    if sr_from == sr_to:
        return x.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(sr_from, sr_to)
    return resample_poly(x, sr_to // g, sr_from // g).astype(np.float32)


def check_waveform(x: np.ndarray, name: str = "<array>", allow_silence: bool = False) -> np.ndarray:
    """Reject empty, non-finite or (unless allowed) all-silent audio."""
    if x.size == 0:
        raise AudioError(name, "zero-length audio")
    if not np.isfinite(x).all():
        raise AudioError(name, "audio contains NaN or inf samples")
    if not allow_silence and float(np.abs(x).max()) < 1e-5:
        raise AudioError(name, "audio is all silence")
    return x


def read_audio(path: str | Path, sr: int = SAMPLE_RATE, allow_silence: bool = False,
               warn: bool = True) -> np.ndarray:
    """Read a file as mono float32 at ``sr``: stereo is mixed down and other rates resampled (with a warning)."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file does not exist")
    try:
        x, file_sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except Exception as e:  # noqa: BLE001 - soundfile raises several types for corrupt files
        raise AudioError(path, f"unreadable or corrupt audio ({type(e).__name__}: {e})") from e
    if x.shape[1] > 1:
        if warn:
            logger.warning("%s: %d channels, mixing down to mono", path, x.shape[1])
        x = x.mean(axis=1, keepdims=True)
    x = x[:, 0]
    if file_sr != sr:
        if warn:
            logger.warning("%s: sample rate %d Hz, resampling to %d Hz", path, file_sr, sr)
        if x.size:
            x = resample(x, file_sr, sr)
    return check_waveform(x, str(path), allow_silence)


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """(sample_rate, channels, frames) without reading the samples."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:  # noqa: BLE001
        raise AudioError(path, f"unreadable or corrupt audio ({type(e).__name__}: {e})") from e
    return info.samplerate, info.channels, info.frames


def write_prompt_wav(source: str | Path, end_s: float, path: str | Path) -> np.ndarray:
    """Cut ``source`` from 0 to ``end_s`` seconds, write it to ``path`` (16-bit wav) and return the cut
    (T,); AudioError if the source is unusable or the cut is empty.  The round's vocode stage and the
    evaluation cut their prompts' audio, which Whisper transcribes, with this one rule."""
    wav = read_audio(source, warn=False)
    end = int(round(end_s * SAMPLE_RATE))
    if end <= 0:
        raise AudioError(source, f"prompt_end_s={end_s} leaves no prompt audio")
    write_wav(path, wav[:end])
    return wav[:end]


def write_wav(path: str | Path, x: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write (T,) float audio as 16-bit PCM wav, atomically."""
    import soundfile as sf

    x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), x, sr, subtype="PCM_16", format="WAV")
