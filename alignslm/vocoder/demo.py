"""The demo vocoder: deduplicated units (+ durations) -> log-magnitude spectrogram -> Griffin-Lim waveform.

Trained from scratch on the demo corpus in minutes on a CPU, with no pretrained weights:

- durations: each unit's mean run length in the training units (``mean``), or a small conv predictor over
  the unit sequence (``conv``); ``auto`` keeps whichever has the lower held-out error;
- spectra, ``method=exemplar`` (the default): an :class:`ExemplarBank` of real log-magnitude frames of the
  training utterances, searched (suffix array) for the longest unit n-gram of the query; each chosen run's
  real frames are time-warped to the wanted duration (``duration=exemplar``: the chosen runs' own lengths);
- spectra, ``method=net``: units are repeated by their durations to the tokenizer's frame rate; each frame
  gets the unit embedding, a voice embedding (the corpus' eSpeak voice; one fixed voice at inference) and
  its position within its run; a residual conv stack (masked, so a padded batch equals one-at-a-time)
  predicts ``r`` STFT frames of log-magnitude per unit frame (``r`` = unit hop / STFT hop), trained with L1;
- the waveform is rebuilt by fast Griffin-Lim (momentum 0.99, zero initial phase: deterministic).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignslm import logger
from alignslm.rundir import atomic_path, write_json, write_torch
from alignslm.vocoder import torch_threads
from alignslm.vocoder.hifigan import CPU_MIN_FILL, CheckpointError, check_durations, check_units, length_batches


@dataclass
class DemoSpec:
    """Everything needed to rebuild the model (saved as demo.json next to demo.pt)."""

    n_units: int
    frame_rate: float  # unit frames per second
    voices: list[str] = field(default_factory=lambda: ["default"])
    voice: str = "default"  # the voice used at inference
    sample_rate: int = 16_000
    n_fft: int = 512
    hop: int = 160
    dim: int = 192
    layers: int = 5
    kernel: int = 5
    duration: str = "mean"  # mean | conv
    mean_durations: list[float] = field(default_factory=list)
    gl_iters: int = 32
    sharpen: float = 1.0  # spectral contrast: each frame's log-magnitude is scaled about its mean by this
    method: str = "net"  # net (conv stack over unit frames) | exemplar (real spectra from an ExemplarBank)
    max_match: int = 8  # exemplar: longest unit n-gram looked up in the bank

    @property
    def samples_per_frame(self) -> int:
        return int(round(self.sample_rate / self.frame_rate))

    @property
    def r(self) -> int:
        """STFT frames per unit frame."""
        return self.samples_per_frame // self.hop


def choose_hop(sample_rate: int, frame_rate: float, target: int = 160) -> int:
    """An STFT hop near ``target`` that divides the samples per unit frame."""
    spf = sample_rate / frame_rate
    if abs(spf - round(spf)) > 1e-6:
        raise ValueError(f"frame rate {frame_rate} Hz does not give a whole number of samples at {sample_rate} Hz")
    spf = int(round(spf))
    r = max(1, round(spf / target))
    while spf % r:
        r += 1
    return spf // r


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class _Block(nn.Module):
    def __init__(self, dim: int, k: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, k, padding=k // 2)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:  # x (B, T, D), m (B, T, 1)
        h = self.conv(F.gelu(self.norm(x)).mul(m).transpose(1, 2)).transpose(1, 2)
        return x + h * m


class DurationNet(nn.Module):
    """Unit sequence -> log run length per unit (two masked convs)."""

    def __init__(self, n_units: int, dim: int = 64, k: int = 3):
        super().__init__()
        self.emb = nn.Embedding(n_units, dim)
        self.blocks = nn.ModuleList(_Block(dim, k) for _ in range(2))
        self.proj = nn.Linear(dim, 1)

    def forward(self, units: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, N)
        m = mask.unsqueeze(2).float()
        x = self.emb(units) * m
        for b in self.blocks:
            x = b(x, m)
        return self.proj(x).squeeze(2)


class DemoNet(nn.Module):
    """Frame-level units -> log-magnitude STFT frames, (B, T) -> (B, T * r, n_fft // 2 + 1)."""

    def __init__(self, spec: DemoSpec):
        super().__init__()
        self.spec = spec
        self.unit = nn.Embedding(spec.n_units, spec.dim)
        self.voice = nn.Embedding(len(spec.voices), spec.dim)
        self.pos = nn.Linear(2, spec.dim)
        self.blocks = nn.ModuleList(_Block(spec.dim, spec.kernel) for _ in range(spec.layers))
        self.norm = nn.LayerNorm(spec.dim)
        n_bins = spec.r * (spec.n_fft // 2 + 1)
        self.out = nn.Linear(spec.dim, n_bins)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # per (voice, unit) mean log-magnitude frames: the context-free base the conv stack corrects
        self.table = nn.Embedding(len(spec.voices) * spec.n_units, n_bins)
        self.dur = DurationNet(spec.n_units)

    def forward(self, units: torch.Tensor, pos: torch.Tensor, voice: torch.Tensor, mask: torch.Tensor
                ) -> torch.Tensor:
        """units (B, T) long, pos (B, T, 2), voice (B,), mask (B, T) bool -> log-magnitude (B, T*r, F)."""
        m = mask.unsqueeze(2).float()  # (B, T, 1)
        x = (self.unit(units) + self.pos(pos) + self.voice(voice)[:, None, :]) * m  # (B, T, D)
        for b in self.blocks:
            x = b(x, m)
        base = self.table(voice[:, None] * self.spec.n_units + units)  # (B, T, r * F)
        y = base + self.out(self.norm(x))  # (B, T, r * F)
        b_, t_ = units.shape
        return y.view(b_, t_ * self.spec.r, -1)


def expand(units: list[int], durations: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Run-length expansion: (N,) units + (N,) durations -> (T,) frame units, (T, 2) position features."""
    d = np.asarray(durations, dtype=np.int64)
    frames = np.repeat(np.asarray(units, dtype=np.int64), d)  # (T,)
    starts = np.repeat(np.cumsum(d) - d, d)
    idx = np.arange(frames.size) - starts  # position within the run
    run = np.repeat(d, d).astype(np.float32)
    pos = np.stack([(idx + 0.5) / run, np.log(run)], axis=1).astype(np.float32)  # (T, 2)
    return frames, pos


# --------------------------------------------------------------------------------------------------
# Spectrograms and Griffin-Lim
# --------------------------------------------------------------------------------------------------


def log_magnitude(wav: torch.Tensor, n_fft: int, hop: int, n_frames: int) -> torch.Tensor:
    """(B, S) -> (B, n_frames, F) log(|STFT| + 1e-4), centred frames, zero padding at the edges."""
    win = torch.hann_window(n_fft, device=wav.device)
    s = torch.stft(wav, n_fft, hop, window=win, center=True, pad_mode="constant", return_complex=True)
    return torch.log(s.abs() + 1e-4).transpose(1, 2)[:, :n_frames]


def griffin_lim(mag: torch.Tensor, lengths: torch.Tensor, n_fft: int, hop: int, iters: int,
                momentum: float = 0.99) -> torch.Tensor:
    """Fast Griffin-Lim. mag (B, N, F) (zero beyond each item), lengths (B,) samples -> (B, >= N * hop).

    The signal is cut to each item's length every iteration, so a padded batch equals one-at-a-time.
    """
    # zero frames past the end, so istft's window normalisation near an item's end sees the same frames
    # whether or not longer items share the batch
    mag = F.pad(mag, (0, 0, 0, n_fft // hop + 1))
    b, n, _ = mag.shape
    total = n * hop
    win = torch.hann_window(n_fft, device=mag.device)
    smask = (torch.arange(total, device=mag.device)[None, :] < lengths[:, None]).float()  # (B, S)
    spec_mag = mag.transpose(1, 2)  # (B, F, N)
    angles = torch.ones_like(spec_mag, dtype=torch.complex64)
    prev = torch.zeros_like(angles)
    for _ in range(iters):
        wav = torch.istft(spec_mag * angles, n_fft, hop, window=win, center=True, length=total) * smask
        rebuilt = torch.stft(wav, n_fft, hop, window=win, center=True, pad_mode="constant",
                             return_complex=True)[:, :, :n]
        angles = rebuilt - (momentum / (1 + momentum)) * prev
        prev = rebuilt
        angles = angles / (angles.abs() + 1e-16)
    return torch.istft(spec_mag * angles, n_fft, hop, window=win, center=True, length=total) * smask


# --------------------------------------------------------------------------------------------------
# Exemplars: real spectra of the training corpus, found by the longest matching unit n-gram
# --------------------------------------------------------------------------------------------------

BANK_FILE = "demo_bank.npz"
CONTEXT_PENALTY = 0.5  # cost of a candidate whose left neighbour in the bank differs from the query's
CONTIGUOUS_BONUS = 0.5  # cost taken off a candidate that continues the previous pick in the bank
# banked log-magnitudes are stored as uint8 over [log(1e-4), log(n_fft / 2)] (|STFT| of a Hann-windowed
# signal in [-1, 1] is at most n_fft / 2): steps of ~0.06 nats = 0.5 dB, half the size of float16
LOG_FLOOR = math.log(1e-4)


def quantize(lm: np.ndarray, n_fft: int) -> np.ndarray:
    step = (math.log(n_fft / 2) - LOG_FLOOR) / 255
    return np.clip(np.round((lm - LOG_FLOOR) / step), 0, 255).astype(np.uint8)


def dequantize(q: np.ndarray, n_fft: int) -> np.ndarray:
    return q.astype(np.float32) * np.float32((math.log(n_fft / 2) - LOG_FLOOR) / 255) + np.float32(LOG_FLOOR)


def warp(x: np.ndarray, n: int) -> np.ndarray:
    """(T, F) frames -> (n, F) by linear interpolation in time (frame centres kept aligned)."""
    t = x.shape[0]
    if t == n:
        return x
    pos = np.clip((np.arange(n) + 0.5) * (t / n) - 0.5, 0.0, t - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, t - 1)
    w = (pos - lo).astype(np.float32)[:, None]
    return x[lo] * (1 - w) + x[hi] * w


class ExemplarBank:
    """Log-magnitude STFT frames of real training utterances, indexed by unit n-grams (1..max_match).

    ``units`` (M,) int32 holds the banked utterances' deduplicated units with -1 before each utterance,
    ``durs`` (M,) their run lengths (unit frames), ``start`` (M,) each run's first row in ``frames``
    (Fn, F) uint8 (:func:`quantize`).  :meth:`select` covers a query left to right with the longest n-gram
    found in the bank, choosing among its occurrences the one whose run lengths best fit the wanted durations
    (and whose left neighbour matches the query's), then time-warps each run's real frames to its wanted length: real
    spectra, not the over-smoothed mean a regression net predicts.
    """

    def __init__(self, units: np.ndarray, durs: np.ndarray, start: np.ndarray, frames: np.ndarray, r: int,
                 max_match: int, n_fft: int):
        self.units = np.asarray(units, dtype=np.int32)
        self.durs = np.asarray(durs, dtype=np.int32)
        self.start = np.asarray(start, dtype=np.int64)
        self.frames = np.asarray(frames, dtype=np.uint8)
        self.r, self.max_match, self.n_fft = int(r), max(1, int(max_match)), int(n_fft)
        self.fallback = dequantize(self.frames, n_fft).mean(0) if len(self.frames) else None
        self._index: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def build(cls, utts: list[Utterance], spec: DemoSpec, voice: int | None, max_utterances: int) -> ExemplarBank:
        """Bank up to ``max_utterances`` utterances of ``voice`` (None: of any voice), plus utterances of other
        voices only where they hold units the bank still lacks (so every unit seen in training has one)."""
        mine = [u for u in utts if voice is None or u.voice == voice][:max_utterances]
        seen = {x for u in mine for x in u.units}
        for u in utts:
            if u.voice != voice and not set(u.units) <= seen:
                mine.append(u)
                seen |= set(u.units)
        units, durs, start, frames, row = [], [], [], [], 0
        for u in mine:
            f, _ = expand(u.units, u.durations)
            wav = torch.from_numpy(u.wav.astype(np.float32) / 32767.0)[None]
            lm = log_magnitude(wav, spec.n_fft, spec.hop, f.size * spec.r)[0].numpy()  # (T*r, F)
            d = np.asarray(u.durations, dtype=np.int64)
            units += [-1, *u.units]
            durs += [0, *u.durations]
            start += [row, *(row + (np.cumsum(d) - d) * spec.r).tolist()]
            frames.append(quantize(lm, spec.n_fft))
            row += lm.shape[0]
        n_bins = spec.n_fft // 2 + 1
        return cls(np.asarray(units), np.asarray(durs), np.asarray(start),
                   np.concatenate(frames) if frames else np.zeros((0, n_bins), np.uint8), spec.r, spec.max_match,
                   spec.n_fft)

    # -- persistence (plain arrays, no pickle) --
    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, units=self.units, durs=self.durs, start=self.start, frames=self.frames)

    @classmethod
    def load(cls, path: Path, spec: DemoSpec) -> ExemplarBank:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["units"], z["durs"], z["start"], z["frames"], spec.r, spec.max_match, spec.n_fft)

    # -- lookup --
    def index(self) -> tuple[np.ndarray, np.ndarray]:
        """A suffix array of the bank's units cut to ``max_match``: (order (M,), sorted prefixes (M, L)),
        so the occurrences of any n-gram (n <= L) are one contiguous range, narrowed a column at a time."""
        if self._index is None:
            m, length = len(self.units), self.max_match
            dt = np.int16 if self.units.max(initial=0) < 2**15 else np.int32
            padded = np.concatenate([self.units, np.full(length, -1, np.int32)]).astype(dt)
            windows = np.lib.stride_tricks.sliding_window_view(padded, length)[:m]  # (M, L) view
            order = np.lexsort(windows.T[::-1])  # column 0 is the primary key
            self._index = (order, np.ascontiguousarray(windows[order]))
        return self._index

    def longest(self, query: list[int] | np.ndarray) -> tuple[int, np.ndarray]:
        """(n, bank positions) of the longest prefix of ``query`` (n <= max_match) found in the bank;
        (0, empty) when not even its first unit is."""
        order, pref = self.index()
        lo, hi, n = 0, len(order), 0
        for k in range(min(self.max_match, len(query))):
            col = pref[lo:hi, k]
            a = int(np.searchsorted(col, query[k], "left"))
            b = int(np.searchsorted(col, query[k], "right"))
            if a == b:
                break
            lo, hi, n = lo + a, lo + b, k + 1
        return (n, np.sort(order[lo:hi])) if n else (0, np.zeros(0, np.int64))

    def plan(self, units: list[int], durations: list[int] | None = None
             ) -> tuple[list[tuple[int, int, int]], list[int]]:
        """Cover ``units`` left to right by the longest n-gram found in the bank.

        Among an n-gram's occurrences the cheapest wins: the run lengths' misfit to ``durations``
        (sum of |log ratio|; without durations, to the occurrences' median), plus a penalty where the left
        neighbour differs from the query's, minus a bonus where it continues the previous pick; ties go to the
        lowest position (deterministic).  Returns [(query index, bank position or -1 = unseen unit, n)] and
        the durations (``durations``, or the chosen exemplars' own run lengths).
        """
        fit_own = durations is None
        out_d = [] if fit_own else list(durations)
        steps: list[tuple[int, int, int]] = []
        q = np.asarray(units)
        i, prev_end, n_all = 0, -1, len(units)
        while i < n_all:
            n, c = self.longest(q[i:])
            if not n:  # a unit never seen in training
                steps.append((i, -1, 1))
                if fit_own:
                    out_d.append(2)
                i, prev_end = i + 1, -1
                continue
            have = self.durs[c[:, None] + np.arange(n)].astype(np.float64)  # (C, n)
            want = np.median(have, axis=0) if fit_own else np.asarray(durations[i:i + n], dtype=np.float64)
            cost = np.abs(np.log(have / want[None])).sum(1)
            if i > 0:
                cost += CONTEXT_PENALTY * (self.units[c - 1] != units[i - 1])
                cost -= CONTIGUOUS_BONUS * (c == prev_end)
            j = int(np.argmin(cost))  # the first (lowest position) of equal costs
            p = int(c[j])
            steps.append((i, p, n))
            if fit_own:
                out_d += have[j].astype(int).tolist()
            i, prev_end = i + n, p + n
        return steps, out_d

    def select(self, units: list[int], durations: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
        """Units (+ durations in unit frames; None: the exemplars' own) -> ((sum(durations) * r, F) float32
        log-magnitude of real frames, durations)."""
        steps, durs = self.plan(units, durations)
        r, out = self.r, []
        for i, p, n in steps:
            if p < 0:
                if self.fallback is None:
                    raise ValueError("the exemplar bank is empty")
                out.append(np.repeat(self.fallback[None], durs[i] * r, axis=0))
                continue
            for j in range(n):
                a = int(self.start[p + j])
                seg = dequantize(self.frames[a:a + int(self.durs[p + j]) * r], self.n_fft)
                out.append(warp(seg, durs[i + j] * r))
        return np.concatenate(out), durs


# --------------------------------------------------------------------------------------------------
# The vocoder
# --------------------------------------------------------------------------------------------------


class DemoVocoder:
    """``vocode(units_list, durations=None) -> [waveform]`` with the trained :class:`DemoNet`."""

    kind = "demo"

    def __init__(self, net: DemoNet, batch_size: int = 16, bank: ExemplarBank | None = None):
        if net.spec.method == "exemplar" and bank is None:
            raise CheckpointError("a demo vocoder with method=exemplar needs its exemplar bank")
        self.net = net.eval()
        self.bank = bank
        self.spec = net.spec
        self.sample_rate = self.spec.sample_rate
        self.n_units = self.spec.n_units
        self.batch_size = batch_size
        self.voice_id = self.spec.voices.index(self.spec.voice) if self.spec.voice in self.spec.voices else 0

    @classmethod
    def load(cls, directory: str | Path, batch_size: int = 16, device: str = "cpu") -> DemoVocoder:
        d = Path(directory)
        if not (d / "demo.json").is_file() or not (d / "demo.pt").is_file():
            raise CheckpointError(f"{d}: a demo vocoder directory holds demo.json and demo.pt (run the vocoder stage)")
        spec = DemoSpec(**json.loads((d / "demo.json").read_text()))
        net = DemoNet(spec)
        state = torch.load(d / "demo.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        bank = None
        if spec.method == "exemplar":
            if not (d / BANK_FILE).is_file():
                raise CheckpointError(f"{d}: method=exemplar but {BANK_FILE} is missing")
            bank = ExemplarBank.load(d / BANK_FILE, spec)
        return cls(net.to(device), batch_size=batch_size, bank=bank)

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        write_json(d / "demo.json", asdict(self.spec))
        write_torch(d / "demo.pt", self.net.state_dict())
        if self.bank is not None:
            self.bank.save(d / BANK_FILE)

    @torch.inference_mode()
    def predict_durations(self, units_list: list[list[int]]) -> list[list[int]]:
        """Run lengths per unit (frames at the tokenizer's rate), >= 1."""
        if self.spec.duration == "exemplar":
            if self.bank is None:
                raise CheckpointError("duration=exemplar needs the exemplar bank (method=exemplar)")
            return [self.bank.plan(u)[1] for u in units_list]
        if self.spec.duration == "mean":
            table = np.asarray(self.spec.mean_durations)
            return [np.maximum(1, np.round(table[np.asarray(u)])).astype(int).tolist() for u in units_list]
        dev = self.net.unit.weight.device
        out: list[list[int]] = [[] for _ in units_list]
        for idx in length_batches([len(u) for u in units_list], 64):
            units, mask = _pad([units_list[i] for i in idx], dev)
            logd = self.net.dur(units, mask)  # (B, N)
            d = torch.clamp(torch.round(torch.exp(logd)), min=1).long().cpu()
            for j, i in enumerate(idx):
                out[i] = d[j, : len(units_list[i])].tolist()
        return out

    @torch.inference_mode()
    def vocode(self, units_list: list[list[int]], durations: list[list[int]] | None = None,
               batch_size: int | None = None) -> list[np.ndarray]:
        """A batch of unit sequences of different lengths -> one trimmed float32 waveform each."""
        check_units(units_list, self.n_units)
        check_durations(units_list, durations)
        if durations is None:
            durations = self.predict_durations(units_list)
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(units_list)
        frames = [int(sum(d)) for d in durations]
        min_fill = CPU_MIN_FILL if self.net.unit.weight.device.type == "cpu" else 0.0
        for idx in length_batches(frames, batch_size or self.batch_size, min_fill):
            wav = self._synth([units_list[i] for i in idx], [durations[i] for i in idx])
            for j, i in enumerate(idx):
                out[i] = wav[j, : frames[i] * self.spec.samples_per_frame].copy()
        return out

    def _synth(self, units_list: list[list[int]], durations: list[list[int]]) -> np.ndarray:
        if self.spec.method == "exemplar":
            return self._synth_exemplar(units_list, durations)
        dev = self.net.unit.weight.device
        ex = [expand(u, d) for u, d in zip(units_list, durations)]
        t = max(f.size for f, _ in ex)
        units = torch.zeros(len(ex), t, dtype=torch.long)
        pos = torch.zeros(len(ex), t, 2)
        for j, (f, p) in enumerate(ex):
            units[j, : f.size] = torch.from_numpy(f)
            pos[j, : f.size] = torch.from_numpy(p)
        n = torch.tensor([f.size for f, _ in ex])
        mask = torch.arange(t)[None, :] < n[:, None]
        voice = torch.full((len(ex),), self.voice_id, dtype=torch.long)
        logmag = self.net(units.to(dev), pos.to(dev), voice.to(dev), mask.to(dev))  # (B, T*r, F)
        fmask = (torch.arange(t * self.spec.r, device=dev)[None, :] < (n.to(dev) * self.spec.r)[:, None])
        if self.spec.sharpen != 1.0:  # averaged spectra are over-smoothed; restore some contrast
            mean = logmag.mean(dim=2, keepdim=True)
            logmag = mean + self.spec.sharpen * (logmag - mean)
        mag = torch.exp(logmag) * fmask.unsqueeze(2)
        wav = griffin_lim(mag.float(), n.to(dev) * self.spec.samples_per_frame, self.spec.n_fft, self.spec.hop,
                          self.spec.gl_iters)
        return wav.clamp(-1, 1).cpu().numpy()

    def _synth_exemplar(self, units_list: list[list[int]], durations: list[list[int]]) -> np.ndarray:
        assert self.bank is not None
        dev = self.net.unit.weight.device
        logmags = [self.bank.select(u, d)[0] for u, d in zip(units_list, durations)]
        n = torch.tensor([sum(d) for d in durations])
        mag = torch.zeros(len(logmags), int(n.max()) * self.spec.r, logmags[0].shape[1])
        for j, lm in enumerate(logmags):
            mag[j, : lm.shape[0]] = torch.from_numpy(np.exp(lm))
        wav = griffin_lim(mag.to(dev), n.to(dev) * self.spec.samples_per_frame, self.spec.n_fft, self.spec.hop,
                          self.spec.gl_iters)
        return wav.clamp(-1, 1).cpu().numpy()


def _pad(seqs: list[list[int]], dev: Any) -> tuple[torch.Tensor, torch.Tensor]:
    n = torch.tensor([len(s) for s in seqs])
    x = torch.zeros(len(seqs), int(n.max()), dtype=torch.long)
    for j, s in enumerate(seqs):
        x[j, : len(s)] = torch.tensor(s)
    return x.to(dev), (torch.arange(x.shape[1])[None, :] < n[:, None]).to(dev)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass
class Utterance:
    units: list[int]
    durations: list[int]
    wav: np.ndarray  # (S,) int16, padded/cut to n_frames * samples_per_frame
    voice: int


def mean_durations(utts: list[Utterance], n_units: int) -> list[float]:
    """Each unit's mean run length over the training data (the global mean for unseen units)."""
    tot = np.zeros(n_units)
    cnt = np.zeros(n_units)
    for u in utts:
        np.add.at(tot, np.asarray(u.units), np.asarray(u.durations, dtype=np.float64))
        np.add.at(cnt, np.asarray(u.units), 1.0)
    glob = tot.sum() / max(1.0, cnt.sum())
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), glob).round(4).tolist()


def duration_error(pred: list[list[int]], true: list[list[int]]) -> float:
    """Mean absolute error in frames per unit."""
    p = np.concatenate([np.asarray(x) for x in pred])
    t = np.concatenate([np.asarray(x) for x in true])
    return float(np.abs(p - t).mean())


def unit_spectra(utts: list[Utterance], spec: DemoSpec) -> torch.Tensor:
    """Mean log-magnitude STFT frames per (voice, unit): (V * K, r * F); unseen pairs get the unit's
    mean over voices, then the global mean."""
    n_bins, k, v = spec.r * (spec.n_fft // 2 + 1), spec.n_units, len(spec.voices)
    tot = torch.zeros(v * k, n_bins, dtype=torch.float64)
    cnt = torch.zeros(v * k, dtype=torch.float64)
    for u in utts:
        frames, _ = expand(u.units, u.durations)
        wav = torch.from_numpy(u.wav.astype(np.float32) / 32767.0)[None]
        lm = log_magnitude(wav, spec.n_fft, spec.hop, frames.size * spec.r)[0]  # (T*r, F)
        lm = lm.reshape(frames.size, n_bins).double()  # (T, r*F)
        idx = torch.from_numpy(frames) + u.voice * k
        tot.index_add_(0, idx, lm)
        cnt.index_add_(0, idx, torch.ones(frames.size, dtype=torch.float64))
    per_unit = tot.view(v, k, n_bins).sum(0) / cnt.view(v, k).sum(0).clamp(min=1)[:, None]  # (K, r*F)
    glob = tot.sum(0) / cnt.sum().clamp(min=1)
    per_unit[cnt.view(v, k).sum(0) == 0] = glob
    out = torch.where(cnt[:, None] > 0, tot / cnt.clamp(min=1)[:, None], per_unit.repeat(v, 1))
    return out.float()


def _batch(utts: list[Utterance], spec: DemoSpec, crop: int, rng: np.random.Generator
           ) -> tuple[torch.Tensor, ...]:
    """Random crops of ``crop`` unit frames: units, pos, voice, mask, target log-magnitude."""
    spf, b = spec.samples_per_frame, len(utts)
    units = torch.zeros(b, crop, dtype=torch.long)
    pos = torch.zeros(b, crop, 2)
    mask = torch.zeros(b, crop, dtype=torch.bool)
    wav = torch.zeros(b, crop * spf)
    for j, u in enumerate(utts):
        f, p = expand(u.units, u.durations)
        i0 = int(rng.integers(0, max(1, f.size - crop + 1)))
        n = min(crop, f.size - i0)
        units[j, :n] = torch.from_numpy(f[i0:i0 + n])
        pos[j, :n] = torch.from_numpy(p[i0:i0 + n])
        mask[j, :n] = True
        wav[j, : n * spf] = torch.from_numpy(u.wav[i0 * spf:(i0 + n) * spf].astype(np.float32) / 32767.0)
    target = log_magnitude(wav, spec.n_fft, spec.hop, crop * spec.r)  # (B, crop*r, F)
    voice = torch.tensor([u.voice for u in utts])
    return units, pos, voice, mask, target


def _dur_batch(utts: list[Utterance], crop: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    seqs, durs = [], []
    for u in utts:
        i0 = int(rng.integers(0, max(1, len(u.units) - crop + 1)))
        seqs.append(u.units[i0:i0 + crop])
        durs.append(u.durations[i0:i0 + crop])
    units, mask = _pad(seqs, "cpu")
    d = torch.ones(units.shape, dtype=torch.float32)
    for j, x in enumerate(durs):
        d[j, : len(x)] = torch.tensor(x, dtype=torch.float32)
    return units, mask, torch.log(d)


def train(utts: list[Utterance], held_out: list[Utterance], spec: DemoSpec, steps: int, *, lr: float = 2e-3,
          batch_size: int = 8, crop: int = 64, seed: int = 0, duration: str = "auto", threads: int | None = 1,
          bank_utterances: int = 300, bank_voice: str = "inference") -> tuple[DemoVocoder, dict]:
    """Train the duration net (and, for ``spec.method == "net"``, the spectrogram net; for ``exemplar``, bank
    up to ``bank_utterances`` utterances of the inference voice, or of all voices with ``bank_voice="all"``);
    pick the duration model; return the vocoder
    and a summary."""
    if not utts:
        raise ValueError("the demo vocoder needs training utterances (units + audio); none were found")
    with torch_threads(threads):
        return _train(utts, held_out, spec, steps, lr, batch_size, crop, seed, duration, bank_utterances, bank_voice)


def _train(utts: list[Utterance], held_out: list[Utterance], spec: DemoSpec, steps: int, lr: float,
           batch_size: int, crop: int, seed: int, duration: str, bank_utterances: int,
           bank_voice: str) -> tuple[DemoVocoder, dict]:
    if spec.method not in ("net", "exemplar"):
        raise ValueError(f"demo vocoder method={spec.method!r}: choose net or exemplar")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    spec.mean_durations = mean_durations(utts, spec.n_units)
    net = DemoNet(spec)
    use_net = spec.method == "net"
    bank = None
    if use_net:
        with torch.no_grad():
            net.table.weight.copy_(unit_spectra(utts, spec))
    else:
        voice = spec.voices.index(spec.voice) if spec.voice in spec.voices else 0
        bank = ExemplarBank.build(utts, spec, None if bank_voice == "all" else voice, bank_utterances)
        logger.info("demo vocoder: exemplar bank of %d runs, %d STFT frames (%.0f MB) in %.0fs", len(bank.units),
                    len(bank.frames), bank.frames.nbytes / 2**20, time.time() - t0)
    losses: list[float] = []
    net.train()
    params = [p for p in net.parameters()] if use_net else list(net.dur.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))
    for step in range(steps):
        pick = rng.integers(0, len(utts), size=batch_size)
        spec_loss = torch.zeros(())
        if use_net:
            units, pos, voice, mask, target = _batch([utts[i] for i in pick], spec, crop, rng)
            pred = net(units, pos, voice, mask)  # (B, crop*r, F)
            fm = mask.repeat_interleave(spec.r, dim=1).unsqueeze(2).float()  # (B, crop*r, 1)
            spec_loss = ((pred - target).abs() * fm).sum() / (fm.sum() * target.shape[2])
        du, dm, dlog = _dur_batch([utts[i] for i in pick], 64, rng)
        dur_loss = (((net.dur(du, dm) - dlog) ** 2) * dm).sum() / dm.sum()
        opt.zero_grad(set_to_none=True)
        (spec_loss + dur_loss).backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(spec_loss.detach()))
        if step % 100 == 0 or step == steps - 1:
            logger.info("demo vocoder step %d/%d: L1(log-mag) %.3f, duration MSE %.3f (%.0fs)", step + 1, steps,
                        spec_loss.item(), dur_loss.item(), time.time() - t0)
    voc = DemoVocoder(net.eval(), bank=bank)
    summary = {"train_seconds": round(time.time() - t0, 1), "steps": steps,
               "final_l1": float(np.mean(losses[-20:])), "train_utterances": len(utts)}
    summary.update(_pick_duration(voc, held_out or utts[: max(1, len(utts) // 10)], duration))
    return voc, summary


def _pick_duration(voc: DemoVocoder, held_out: list[Utterance], duration: str) -> dict:
    true = [u.durations for u in held_out]
    units = [u.units for u in held_out]
    err = {}
    for kind in ("mean", "conv") + (("exemplar",) if voc.bank is not None else ()):
        voc.spec.duration = kind
        err[kind] = duration_error(voc.predict_durations(units), true)
    voc.spec.duration = min(err, key=err.get) if duration == "auto" else duration
    logger.info("demo vocoder durations: held-out MAE per unit %s frames -> %s",
                ", ".join(f"{k} {v:.3f}" for k, v in err.items()), voc.spec.duration)
    return {"duration_model": voc.spec.duration, **{f"duration_mae_{k}": round(v, 4) for k, v in err.items()}}
