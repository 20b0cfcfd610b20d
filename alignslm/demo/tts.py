"""Speech for the demo world: eSpeak NG through ctypes (the PyPI package ``espeakng-loader`` ships the
library and its data, so nothing is installed system-wide), 16 kHz mono, with word timestamps.

eSpeak runs in ``AUDIO_OUTPUT_SYNCHRONOUS`` mode: ``espeak_Synth`` returns after the whole text is
synthesised, having called our callback with 22,050 Hz int16 chunks and ``espeakEVENT_WORD`` events
(sample position, text position and length of each word).  Word start/end times are those event
positions refined to the voiced frames between consecutive events.  The library keeps global state, so
one process holds one engine (guarded by a lock); ``synthesize_many`` can use a pool of processes.

Reproducibility: eSpeak's waveform generator carries state from one ``espeak_Synth`` call to the next in
C statics that no API resets (wavegen.c: the pitch-flutter phase ``Flutter_ix``, the gain control ``agc``,
the roughness ``cycle_count``, the breath resonators, the echo buffer while the voice stays set).  So the
same (text, voice, rate) gave different samples depending on what the process had spoken before (for every
voice, en-us included: 51,381 vs 51,394 samples for one sentence after another one), and a pool of workers
(which worker gets which chunk depends on timing), or a cache holding a different subset, made every cold
build its own world.  Each utterance is therefore synthesised by a freshly loaded library (``dlclose`` +
``dlopen`` + ``espeak_Initialize``: every static back to its initial value, ~1 ms; each process loads its own
copy of the file, since a forked pool worker shares its parent's handle to the original) with libc's ``srand``
seeded from (text, voice, rate): the audio is a function of (text, voice, rate) alone.

One more source remains inside eSpeak: variants with a ``breath`` line (``+f2``, ``+f3``, ``+f5``: breath
noise from ``rand()`` through resonators) give different samples in fresh processes even with ``srand``
fixed and ASLR off (4 distinct outputs in 12 processes for one sentence); without the breath line the same
variant is reproducible.  :func:`voice_is_reproducible` names them; the demo's voices avoid them.

Synthesised utterances are cached under ``<cache_dir>/tts/`` keyed by (text, voice, rate,
``TTS_VERSION``), so a rerun costs a file lookup.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignslm import logger
from alignslm.rundir import atomic_path, disk_errors, hash_str, temp_name
from alignslm.speech.audio import SAMPLE_RATE, read_audio, resample

TTS_VERSION = "espeak-tts-4"  # bump when synthesis or word timing changes: invalidates the cache

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED, _EVENT_WORD, _EVENT_END, _EVENT_MSG_TERMINATED = 0, 1, 5, 6
_PARAM_RATE = 1
_PHONEMES_IPA = 0x02


class TTSError(RuntimeError):
    """eSpeak NG could not be loaded or refused a voice/text; the message says which and why."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


@dataclass
class Utterance:
    audio: np.ndarray  # (T,) float32 at 16 kHz
    words: list[dict]  # [{word, start, end}] in seconds
    voice: str
    rate: int

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


class ESpeak:
    """One eSpeak NG engine (per process). Use :func:`engine` rather than constructing it."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise TTSError("the demo speech needs the PyPI package espeakng-loader: "
                           "pip install 'alignslm[demo]'") from e
        self._path = _private_copy(espeakng_loader.get_library_path())
        self._data = espeakng_loader.get_data_path().encode()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int]] = []
        self._cb = _CALLBACK(self._on_audio)  # keep a reference: eSpeak calls it from C
        self._libc = ctypes.CDLL(None)  # the process's libc: the rand() that libespeak-ng calls
        self.lock = threading.Lock()
        self.lib = None
        self._voice: str | None = None
        self._load()
        self.version = self.lib.espeak_Info(None).decode()
        self._fresh = self._reload(check=True)  # False: the library cannot be unloaded here (see _reload)
        if not self._fresh:
            logger.warning("eSpeak NG: the library could not be unloaded between utterances; synthesis "
                           "depends on what this process spoke before (audio not reproducible)")

    def _load(self) -> None:
        try:
            lib = ctypes.CDLL(self._path)
        except OSError as e:
            raise TTSError(f"cannot load libespeak-ng from espeakng-loader ({e})") from e
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data, 0)
        if self.sr <= 0:
            raise TTSError(f"espeak_Initialize failed (returned {self.sr}); data path {self._data.decode()}")
        lib.espeak_SetSynthCallback(self._cb)
        self.lib, self._voice = lib, None

    def _reload(self, check: bool = False) -> bool:
        """Unload and load the library again (every C static back to its initial value).  With ``check``,
        returns whether the library was really unloaded (no other handle kept it mapped)."""
        import _ctypes

        self.lib.espeak_Terminate()
        handle, self.lib = self.lib._handle, None
        close = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
        if close is not None:
            close(handle)
        unloaded = close is not None and not (check and _mapped(self._path))
        self._load()
        return unloaded

    def _on_audio(self, wav: ctypes.POINTER(ctypes.c_short), n: int, events: ctypes.POINTER(_Event)) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            self._events.append((e.type, e.text_position, e.length, e.sample))
            i += 1
        return 0

    def _set_voice(self, voice: str) -> None:
        if voice != self._voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise TTSError(f"eSpeak NG has no voice '{voice}' (try en-us, en, en-us+f3, en+m3)")
            self._voice = voice

    def synth_raw(self, text: str, voice: str, rate: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
        """(int16 samples at self.sr, events [(type, text_position, length, sample)])."""
        data = text.encode("utf-8")
        seed = int(hashlib.sha1(f"{text}\0{voice}\0{int(rate)}".encode()).hexdigest()[:8], 16)
        with self.lock:
            if self._fresh:
                self._reload()
            self._set_voice(voice)
            self.lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
            self._libc.srand(ctypes.c_uint(seed))  # the breath noise of the variant voices
            self._chunks, self._events = [], []
            err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if err != 0:
                raise TTSError(f"espeak_Synth failed with code {err} for text {text[:60]!r}")
            chunks, events = self._chunks, self._events
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return audio, events

    def phonemes(self, text: str, ipa: bool = False, voice: str = "en-us") -> str:
        """eSpeak's phonemes of ``text`` in ``voice`` (its ASCII phoneme mnemonics, or IPA)."""
        buf = ctypes.c_char_p(text.encode("utf-8"))
        ptr = ctypes.pointer(buf)
        out = []
        with self.lock:
            self._set_voice(voice)  # also: without a voice eSpeak has no translator (it would crash)
            while buf.value:
                res = self.lib.espeak_TextToPhonemes(ptr, _CHARS_UTF8, _PHONEMES_IPA if ipa else 0)
                if res is None:
                    break
                out.append(res.decode("utf-8").strip())
        return " ".join(x for x in out if x)


def voice_is_reproducible(voice: str) -> bool:
    """False for a variant (``lang+variant``) whose eSpeak file has a ``breath`` line (see the module doc)."""
    if "+" not in voice:
        return True
    try:
        import espeakng_loader
    except ImportError:
        return True
    f = Path(espeakng_loader.get_data_path()) / "voices" / "!v" / voice.split("+", 1)[1]
    if not f.is_file():
        return True
    return not any(line.split()[:1] == ["breath"] for line in f.read_text(errors="replace").splitlines())


def _private_copy(lib: str) -> str:
    """A copy of the library file that only this process loads: a process forked from one that had loaded
    the original holds a handle to it, and dlclose could never unload it here.  Removed at exit."""
    import atexit
    import tempfile

    d = tempfile.mkdtemp(prefix="alignslm-espeak-")
    dst = os.path.join(d, os.path.basename(lib))
    shutil.copyfile(lib, dst)
    atexit.register(shutil.rmtree, d, True)
    return dst


def _mapped(path: str) -> bool:
    """Whether ``path`` is mapped into this process (Linux: /proc/self/maps; elsewhere assume it is)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return True
    real = os.path.realpath(path)
    return any(line.rstrip().endswith(real) for line in maps.read_text().splitlines())


_ENGINE: ESpeak | None = None


def engine() -> ESpeak:
    """The process-wide eSpeak NG engine (initialised on first use)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = ESpeak()
    return _ENGINE


# --------------------------------------------------------------------------------------------------
# Synthesis with word times
# --------------------------------------------------------------------------------------------------

_FRAME = 160  # 10 ms at 16 kHz


def _voiced_frames(x: np.ndarray) -> np.ndarray:
    """(T,) -> (F,) bool: 10 ms frames louder than -34 dB below the loudest frame."""
    n = len(x) // _FRAME
    rms = np.sqrt((x[: n * _FRAME].reshape(n, _FRAME) ** 2).mean(axis=1) + 1e-12)  # (F,)
    return rms > rms.max() * 0.02 if n else np.zeros(0, bool)


_TOKEN = re.compile(r"[\w'-]+")


def _onsets(text: str, events: list[tuple[int, int, int, int]], sr: int, total: float) -> list[tuple[str, float, bool]]:
    """(word, onset seconds, exact) for every word of ``text``.  eSpeak emits no event for some words
    it joins to the previous one ("on the", "in the"): those get a share of the joint interval in
    proportion to characters, and exact=False."""
    ev = {pos - 1: sample / sr for t, pos, length, sample in events if t == _EVENT_WORD and length > 0}
    toks = [(m.start(), m.group()) for m in _TOKEN.finditer(text)]
    anchors = [(c, ev[c]) for c, _ in toks if c in ev]
    out = []
    for c, w in toks:
        if c in ev:
            out.append((w, ev[c], True))
            continue
        prev = max((a for a in anchors if a[0] < c), default=(0, 0.0))
        nxt = min((a for a in anchors if a[0] > c), default=(len(text), total))
        share = (c - prev[0]) / max(1, nxt[0] - prev[0])
        out.append((w, prev[1] + share * (nxt[1] - prev[1]), False))
    return out


def word_times(text: str, events: list[tuple[int, int, int, int]], sr: int, audio: np.ndarray) -> list[dict]:
    """[{word, start, end}] for every word of ``text`` (seconds): eSpeak's word events, each interval
    trimmed to its voiced 10 ms frames of the 16 kHz ``audio``; ``approx: true`` marks a word whose
    onset was interpolated (see _onsets)."""
    total = len(audio) / SAMPLE_RATE
    voiced = _voiced_frames(audio)
    ons = _onsets(text, events, sr, total)
    out = []
    for i, (word, t0, exact) in enumerate(ons):
        t1 = ons[i + 1][1] if i + 1 < len(ons) else total
        f0 = int(t0 * 100)
        f1 = max(f0 + 1, int(t1 * 100 + 1e-6))  # frames [f0, f1): not the next word's first frame
        idx = np.flatnonzero(voiced[f0:f1])
        if idx.size:
            t0, t1 = (f0 + idx[0]) / 100, (f0 + idx[-1] + 1) / 100
        row = {"word": word, "start": round(float(min(t0, total)), 3), "end": round(float(min(t1, total)), 3)}
        out.append(row if exact else {**row, "approx": True})
    for a, b in zip(out, out[1:]):  # a frame shared by two words goes to the later one
        a["end"] = max(a["start"], min(a["end"], b["start"]))
    return out


def synthesize(text: str, voice: str = "en-us", rate: int = 165) -> Utterance:
    """Speak ``text``: 16 kHz mono float32 audio and word times."""
    eng = engine()
    pcm, events = eng.synth_raw(text, voice, rate)
    if pcm.size == 0:
        raise TTSError(f"eSpeak NG produced no audio for {text[:60]!r} (voice {voice})")
    audio = resample(pcm.astype(np.float32) / 32768.0, eng.sr, SAMPLE_RATE)  # (T,)
    return Utterance(audio, word_times(text, events, eng.sr, audio), voice, int(rate))


def cache_key(text: str, voice: str, rate: int) -> str:
    return hash_str(text, voice, str(int(rate)), TTS_VERSION)


def cache_paths(cache_dir: str | Path, text: str, voice: str, rate: int) -> tuple[Path, Path]:
    key = cache_key(text, voice, rate)
    d = Path(cache_dir).expanduser() / "tts" / key[:2]
    return d / f"{key}.wav", d / f"{key}.json"


def _write_cache_wav(path: Path, audio: np.ndarray) -> None:
    """Write-then-rename without fsync (a cache entry; fsync per file would dominate the cost)."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    with disk_errors(path):
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)


def synthesize_cached(text: str, voice: str, rate: int, cache_dir: str | Path) -> dict:
    """Synthesise into the cache (or find it there). Returns {path, words, duration, voice, rate, cached}."""
    wav, meta = cache_paths(cache_dir, text, voice, rate)
    if wav.exists() and meta.exists():
        try:
            info = json.loads(meta.read_text())
            return {**info, "path": str(wav), "cached": True}
        except json.JSONDecodeError:
            logger.warning("tts cache entry %s is corrupt; synthesising again", meta)
    utt = synthesize(text, voice, rate)
    _write_cache_wav(wav, utt.audio)
    info = {"text": text, "words": utt.words, "duration": round(utt.duration, 4), "voice": voice,
            "rate": int(rate), "version": TTS_VERSION}
    tmp = temp_name(meta)
    with disk_errors(meta):
        tmp.write_text(json.dumps(info))
        os.replace(tmp, meta)  # the json is the commit mark: written after the wav
    return {**info, "path": str(wav), "cached": False}


def _fresh_engine() -> None:
    """Pool initialiser: a forked worker builds its own engine instead of sharing the parent's state."""
    global _ENGINE
    _ENGINE = None


def _job(args: tuple[str, str, int, str]) -> dict:
    try:
        return synthesize_cached(*args)
    except TTSError as e:  # one bad item must not stop the batch: the caller rejects it
        return {"text": args[0], "voice": args[1], "rate": args[2], "error": str(e)}


def synthesize_many(items: Sequence[tuple[str, str, int]], cache_dir: str | Path, workers: int = 1) -> list[dict]:
    """[(text, voice, rate)] -> synthesize_cached rows, in order; ``workers`` > 1 uses a process pool
    (each worker initialises its own engine).  An item eSpeak fails on comes back as a row with
    ``error`` (and no path)."""
    jobs = [(t, v, int(r), str(cache_dir)) for t, v, r in items]
    for v in sorted({j[1] for j in jobs}):
        if not voice_is_reproducible(v):
            logger.warning("eSpeak voice %s uses breath noise: its audio differs from process to process "
                           "(the demo world will not be reproducible); pick a variant without breath", v)
    todo = [j for j in jobs if not all(p.exists() for p in cache_paths(j[3], j[0], j[1], j[2]))]
    if workers > 1 and len(todo) > 50:
        import multiprocessing as mp

        ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
        with ctx.Pool(workers, initializer=_fresh_engine) as pool:
            pool.map(_job, todo, chunksize=16)
    fresh = set(todo)
    return [{**_job(j), "cached": j not in fresh} for j in jobs]


def place_wav(src: str | Path, dst: Path) -> None:
    """Put a copy of a cached wav at ``dst`` (never a link: nothing written in a run may change the cache),
    renamed into place so that concurrent ranks or a rerun never see a missing or half-written file."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def load_utterance(path: str | Path) -> np.ndarray:
    """A cached wav as (T,) float32 at 16 kHz."""
    return read_audio(path)
