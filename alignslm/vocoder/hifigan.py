"""Unit HiFi-GAN (``CodeGenerator``) that loads the public unit HiFi-GAN checkpoints unchanged.

Compatible with the files of speech-resynthesis / textlesslib / fairseq ``CodeHiFiGANVocoder``:
``generator.pt`` (a dict whose ``"generator"`` entry is the state dict, with the old ``weight_g`` /
``weight_v`` weight-norm names, or the newer ``parametrizations.weight.original0/1``) and ``config.json``.
Parameter names follow the public ones (``dict``, ``spkr``, ``style``, ``dur_predictor.conv1.0``,
``conv_pre``, ``ups.i``, ``resblocks.j.convs1.k``, ``conv_post``), so loading is strict.

Weight norm is folded into plain weights while loading (the public code calls ``remove_weight_norm``
after loading; the result is the same tensor).  Unlike the public code, duration prediction and the
generator run on a padded batch of utterances: every convolution's output is masked to each item's
valid length, which reproduces the zero padding a single utterance sees, so a batch gives the same
output as one-at-a-time calls (tested).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignslm import logger

LRELU_SLOPE = 0.1
CPU_MIN_FILL = 0.85  # on a CPU only utterances within 15% of the batch's longest share a padded batch


class CheckpointError(ValueError):
    """A HiFi-GAN directory, config or state dict that cannot be used; the message names the item."""


class ConditioningError(ValueError):
    """The checkpoint needs speaker / F0 conditioning that was not given, or was given in the wrong form."""


class VocoderInputError(ValueError):
    """Bad units for vocoding (out of the table, empty); ``index`` is the item's position in the batch."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"item {index}: {reason}")
        self.index = index
        self.reason = reason


def _pad(k: int, d: int = 1) -> int:
    return (k * d - d) // 2


def _lengths_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(B,) lengths -> (B, 1, T) float mask."""
    return (torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]).unsqueeze(1).float()


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


class ResBlock1(nn.Module):
    """HiFi-GAN V1 multi-receptive-field block: 3 x (dilated conv, conv) with residuals."""

    def __init__(self, ch: int, k: int, dilation: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(ch, ch, k, 1, dilation=d, padding=_pad(k, d)) for d in dilation)
        self.convs2 = nn.ModuleList(nn.Conv1d(ch, ch, k, 1, dilation=1, padding=_pad(k)) for _ in dilation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:  # (B, C, T)
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = _masked(c1(F.leaky_relu(x, LRELU_SLOPE)), mask)
            xt = _masked(c2(F.leaky_relu(xt, LRELU_SLOPE)), mask)
            x = x + xt
        return x


class ResBlock2(nn.Module):
    """HiFi-GAN V2/V3 block: dilated convs with residuals."""

    def __init__(self, ch: int, k: int, dilation: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(ch, ch, k, 1, dilation=d, padding=_pad(k, d)) for d in dilation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:  # (B, C, T)
        for c in self.convs:
            x = x + _masked(c(F.leaky_relu(x, LRELU_SLOPE)), mask)
        return x


class DurationPredictor(nn.Module):
    """conv -> ReLU -> LayerNorm -> conv -> ReLU -> LayerNorm -> linear: log-duration per unit.

    Named like fairseq's ``VariancePredictor`` (``conv1.0``, ``ln1``, ``conv2.0``, ``ln2``, ``proj``).
    The public code pads the second conv by 1 (its checkpoints all use kernel 3, where that equals ours).
    """

    def __init__(self, in_dim: int, hidden: int, kernel: int, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(in_dim, hidden, kernel, padding=(kernel - 1) // 2), nn.ReLU())
        self.ln1 = nn.LayerNorm(hidden)
        self.conv2 = nn.Sequential(nn.Conv1d(hidden, hidden, kernel, padding=(kernel - 1) // 2), nn.ReLU())
        self.ln2 = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, 1)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C), mask (B, T) bool or None -> log-durations (B, T)."""
        m = None if mask is None else mask.unsqueeze(2).to(x.dtype)  # (B, T, 1)
        x = self.conv1(_masked(x, m).transpose(1, 2)).transpose(1, 2)
        x = F.dropout(self.ln1(x), self.dropout, self.training)
        x = self.conv2(_masked(x, m).transpose(1, 2)).transpose(1, 2)
        x = F.dropout(self.ln2(x), self.dropout, self.training)
        return self.proj(x).squeeze(2)


def durations_from_log(log_dur: torch.Tensor) -> torch.Tensor:
    """The public inference rule: ``clamp(round(exp(d) - 1), min=1)`` (long)."""
    return torch.clamp(torch.round(torch.exp(log_dur) - 1).long(), min=1)


class CodeGenerator(nn.Module):
    """Unit embedding -> (duration predictor) -> (speaker/style/F0 channels) -> HiFi-GAN V1 -> tanh."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.cfg = cfg
        emb = int(cfg["embedding_dim"])
        self.dict = nn.Embedding(int(cfg["num_embeddings"]), emb)
        self.multispkr = bool(cfg.get("multispkr"))
        self.embedder = cfg.get("embedder_params")
        self.multistyle = bool(cfg.get("multistyle"))
        self.f0 = bool(cfg.get("f0"))
        if self.multispkr and not self.embedder:
            self.spkr = nn.Embedding(int(cfg.get("num_speakers", 200)), emb)
        elif self.embedder:
            self.spkr = nn.Linear(int(cfg.get("embedder_dim", 256)), emb)
        if self.multistyle:
            self.style = nn.Embedding(int(cfg.get("num_styles", 100)), emb)
        n_f0_bin = int(cfg.get("f0_quant_num_bin", 0) or 0)
        self.f0_quant_embed = nn.Embedding(n_f0_bin, emb) if self.f0 and n_f0_bin > 0 else None
        self.dur_predictor = None
        dp = cfg.get("dur_predictor_params")
        if dp:
            self.dur_predictor = DurationPredictor(
                int(dp["encoder_embed_dim"]), int(dp["var_pred_hidden_dim"]), int(dp["var_pred_kernel_size"]),
                float(dp.get("var_pred_dropout", 0)))
        self._build_generator(cfg)

    def _build_generator(self, cfg: dict[str, Any]) -> None:
        ch0 = int(cfg["upsample_initial_channel"])
        self.rates = [int(u) for u in cfg["upsample_rates"]]
        self.up_kernels = [int(k) for k in cfg["upsample_kernel_sizes"]]
        self.num_kernels = len(cfg["resblock_kernel_sizes"])
        self.conv_pre = nn.Conv1d(int(cfg.get("model_in_dim") or self.expected_in_dim()), ch0, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(ch0 // 2 ** i, ch0 // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(self.rates, self.up_kernels)))
        block = ResBlock1 if str(cfg.get("resblock", "1")) == "1" else ResBlock2
        self.resblocks = nn.ModuleList()
        ch = ch0
        for i in range(len(self.ups)):
            ch = ch0 // 2 ** (i + 1)
            for k, d in zip(cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"]):
                self.resblocks.append(block(ch, int(k), tuple(int(x) for x in d)))
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3)

    def expected_in_dim(self) -> int:
        """Channels fed to conv_pre: units + speaker + style + F0 (1, or embedding_dim when quantised)."""
        emb = int(self.cfg["embedding_dim"])
        n = emb * (1 + int(self.multispkr or bool(self.embedder)) + int(self.multistyle))
        if self.f0:
            n += emb if self.f0_quant_embed is not None else 1
        return n

    def speaker_need(self) -> str:
        """What speaker conditioning this checkpoint takes, as an instruction (for error messages)."""
        if self.embedder:
            return (f"this HiFi-GAN is conditioned on a speaker embedding (config.json embedder_params): pass "
                    f"speaker=<{self.spkr.in_features} floats> (one vector for every utterance, or one per "
                    "utterance) to HifiganVocoder(...) or vocode(...)")
        if self.multispkr:
            return (f"this HiFi-GAN is multi-speaker (config.json multispkr): pass a speaker id in "
                    f"[0, {self.spkr.num_embeddings}) (vocoder.speaker, or vocode(..., speaker=id or [id, ...]))")
        return "this HiFi-GAN takes no speaker conditioning"

    @property
    def hop(self) -> int:
        """Output samples per input frame (product of the upsample rates)."""
        return int(np.prod(self.rates))

    def output_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        """(B,) input frames -> (B,) output samples (the transposed convs' length rule)."""
        for u, k in zip(self.rates, self.up_kernels):
            frames = (frames - 1) * u - 2 * ((k - u) // 2) + k
        return frames

    # ---------------------------------------------------------------------------------------------

    def predict_durations(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """codes (B, N) long padded, lengths (B,) -> durations (B, N) long (0 on padding)."""
        mask = torch.arange(codes.shape[1], device=codes.device)[None, :] < lengths[:, None]  # (B, N)
        x = self.dict(codes)  # (B, N, D)
        dur = durations_from_log(self.dur_predictor(x, mask if codes.shape[0] > 1 else None))
        return dur * mask

    def generate(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The HiFi-GAN V1 generator on a padded batch. x (B, C, T), lengths (B,) -> (B, T * hop)."""
        masked = bool((lengths != x.shape[2]).any())
        mask = _lengths_mask(lengths, x.shape[2]) if masked else None
        x = _masked(self.conv_pre(_masked(x, mask)), mask)  # (B, C0, T)
        for i, (up, u, k) in enumerate(zip(self.ups, self.rates, self.up_kernels)):
            x = up(F.leaky_relu(x, LRELU_SLOPE))  # (B, C0 / 2^(i+1), T * u)
            lengths = (lengths - 1) * u - 2 * ((k - u) // 2) + k
            mask = _lengths_mask(lengths, x.shape[2]) if masked else None
            x = _masked(x, mask)
            xs = self.resblocks[i * self.num_kernels](x, mask)
            for j in range(1, self.num_kernels):
                xs = xs + self.resblocks[i * self.num_kernels + j](x, mask)
            x = xs / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))  # the public code uses the default slope (0.01) here
        return torch.tanh(x).squeeze(1)  # (B, T * hop)

    def forward(self, code: torch.Tensor, dur_prediction: bool = False, spkr: torch.Tensor | None = None,
                style: torch.Tensor | None = None, f0: torch.Tensor | None = None) -> torch.Tensor:
        """The public single-utterance interface. code (1, N) -> waveform (1, 1, samples)."""
        n = torch.tensor([code.shape[1]])
        cond = BatchConditioning(spkr=None if spkr is None else spkr.view(-1),
                                 style=None if style is None else style.view(-1),
                                 f0=[f0.view(-1)] if f0 is not None else None)
        x, lengths = self.features(code, n, durations=None if not dur_prediction else "predict", cond=cond)
        return self.generate(x, lengths).unsqueeze(1)

    def features(self, codes: torch.Tensor, lengths: torch.Tensor, durations: Any, cond: BatchConditioning
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded codes (B, N) -> generator input (B, C_in, T) and frame lengths (B,).

        ``durations``: None (no repetition), "predict", or a (B, N) long tensor of run lengths.
        """
        if isinstance(durations, str):
            durations = self.predict_durations(codes, lengths)
        emb = self.dict(codes)  # (B, N, D)
        if durations is not None:
            rows = [torch.repeat_interleave(emb[b, :lengths[b]], durations[b, :lengths[b]], dim=0)
                    for b in range(codes.shape[0])]
            lengths = torch.tensor([r.shape[0] for r in rows])
            emb = nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (B, T, D)
        x = emb.transpose(1, 2)  # (B, D, T)
        if self.f0:
            x, lengths = self._cat_f0(x, lengths, cond.f0)
        b, t = x.shape[0], x.shape[2]
        if self.multispkr or self.embedder:
            if cond.spkr is None:
                raise ConditioningError(self.speaker_need())
            s = self.spkr(cond.spkr)  # ids (Embedding) or embedding vectors (Linear) -> (1 or B, emb) / (emb,)
            s = s.reshape(-1, s.shape[-1])
            if s.shape[0] not in (1, b):
                raise ConditioningError(f"{s.shape[0]} speaker conditionings for a batch of {b} utterances")
            x = torch.cat([x, s[:, :, None].expand(b, -1, t)], dim=1)
        if self.multistyle:
            st = self.style(cond.style if cond.style is not None else torch.zeros(1, dtype=torch.long))
            x = torch.cat([x, st.view(1, -1, 1).expand(b, -1, t)], dim=1)
        return x, lengths

    def _cat_f0(self, x: torch.Tensor, lengths: torch.Tensor, f0: list[torch.Tensor] | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append F0 channels; the shorter of (units, F0) is repeated to the other's rate (integer ratio)."""
        if f0 is None or len(f0) != x.shape[0]:
            raise ConditioningError("this HiFi-GAN is F0-conditioned (config.json f0: true): pass one F0 track per "
                                    "item, vocode(..., f0=[track, ...])")
        rows, new_len = [], []
        for b, track in enumerate(f0):
            u = x[b, :, :lengths[b]]  # (D, T_b)
            f = (self.f0_quant_embed(track.long()).T if self.f0_quant_embed is not None
                 else track.float().view(1, -1))  # (C_f0, T_f)
            if f.shape[1] >= u.shape[1]:
                u = _repeat_to(u, f.shape[1], b)
            else:
                f = _repeat_to(f, u.shape[1], b)
            rows.append(torch.cat([u, f], dim=0).T)
            new_len.append(rows[-1].shape[0])
        return nn.utils.rnn.pad_sequence(rows, batch_first=True).transpose(1, 2), torch.tensor(new_len)


class BatchConditioning:
    """Per-batch conditioning: speaker id / embedding, style id, per-item F0 tracks."""

    def __init__(self, spkr: torch.Tensor | None = None, style: torch.Tensor | None = None,
                 f0: list[torch.Tensor] | None = None):
        self.spkr, self.style, self.f0 = spkr, style, f0


def _repeat_to(sig: torch.Tensor, t: int, item: int) -> torch.Tensor:
    """(C, T0) -> (C, t) by repeating each frame t / T0 times (an integer ratio, as the public code needs)."""
    if t % sig.shape[1]:
        raise VocoderInputError(item, f"F0 frames and unit frames do not align ({t} vs {sig.shape[1]})")
    return torch.repeat_interleave(sig, t // sig.shape[1], dim=1)


# --------------------------------------------------------------------------------------------------
# Loading: config.json + generator.pt, strict, weight norm folded
# --------------------------------------------------------------------------------------------------

REQUIRED_KEYS = ("upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel", "resblock_kernel_sizes",
                 "resblock_dilation_sizes", "num_embeddings", "embedding_dim")


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and check a HiFi-GAN ``config.json``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a unit HiFi-GAN directory holds generator.pt and config.json")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {', '.join(missing)} (see the unit HiFi-GAN config format)")
    if len(cfg["upsample_rates"]) != len(cfg["upsample_kernel_sizes"]):
        raise CheckpointError(f"{path}: upsample_rates and upsample_kernel_sizes differ in length")
    dp = cfg.get("dur_predictor_params")
    if dp and int(dp.get("encoder_embed_dim", cfg["embedding_dim"])) != int(cfg["embedding_dim"]):
        raise CheckpointError(f"{path}: dur_predictor_params.encoder_embed_dim ({dp['encoder_embed_dim']}) "
                              f"!= embedding_dim ({cfg['embedding_dim']})")
    return cfg


def fold_weight_norm(state: dict[str, torch.Tensor], source: str = "generator.pt") -> dict[str, torch.Tensor]:
    """Replace ``X.weight_g``/``X.weight_v`` (or ``X.parametrizations.weight.original0/1``) by ``X.weight``.

    The norm is taken over every dim but 0, as ``torch.nn.utils.weight_norm`` does by default for
    Conv1d and ConvTranspose1d alike; the result equals the weight after ``remove_weight_norm``.
    """
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        for g_name, v_name in ((".weight_g", ".weight_v"),
                               (".parametrizations.weight.original0", ".parametrizations.weight.original1")):
            if k.endswith(g_name):
                pairs.setdefault(k[: -len(g_name)], {})["g"] = v
                break
            if k.endswith(v_name):
                pairs.setdefault(k[: -len(v_name)], {})["v"] = v
                break
        else:
            out[k] = v
    for prefix, gv in pairs.items():
        if set(gv) != {"g", "v"}:
            raise CheckpointError(f"{source}: '{prefix}' has only half of a weight-norm pair "
                                  f"({'weight_g' if 'g' in gv else 'weight_v'}); the checkpoint is incomplete")
        g, v = gv["g"].float(), gv["v"].float()
        if g.numel() != v.shape[0]:
            raise CheckpointError(f"{source}: '{prefix}.weight_g' has shape {tuple(g.shape)}, which does not match "
                                  f"'{prefix}.weight_v' {tuple(v.shape)}")
        norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
        out[prefix + ".weight"] = v * (g.view_as(norm) / norm)
    return out


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with errors that name the tensor and both shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: the weights do not match config.json: missing {missing[:6]}"
            f"{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''} "
            "(check multispkr / multistyle / f0 / dur_predictor_params / resblock in config.json)")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: tensor '{k}' has shape {tuple(state[k].shape)} in the checkpoint but "
                                  f"config.json implies {tuple(v.shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def load_codegenerator(directory: str | Path, device: str | torch.device = "cpu") -> CodeGenerator:
    """Load ``<dir>/config.json`` + ``<dir>/generator.pt`` (``torch.load(weights_only=True)``), strictly."""
    d = Path(directory).expanduser()
    cfg = read_config(d / "config.json")
    ckpt_path = d / "generator.pt"
    if not ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path}: missing; a unit HiFi-GAN directory holds generator.pt and config.json")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for bad or unsafe files
        raise CheckpointError(
            f"{ckpt_path}: cannot be read as a weights-only torch file ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "generator" not in ckpt:
        keys = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{ckpt_path}: expected a dict with a 'generator' state dict, found {keys}")
    model = CodeGenerator(cfg)
    load_state_strict(model, fold_weight_norm(ckpt["generator"], str(ckpt_path)), str(ckpt_path))
    logger.info("loaded unit HiFi-GAN from %s (%d units, hop %d, duration predictor: %s)", d,
                cfg["num_embeddings"], model.hop, model.dur_predictor is not None)
    return model.eval().to(device)


# --------------------------------------------------------------------------------------------------
# The Vocoder interface
# --------------------------------------------------------------------------------------------------


def check_units(units_list: list[list[int]], n_units: int) -> None:
    """Every item non-empty with ids in [0, n_units); else :class:`VocoderInputError` naming the item."""
    for i, u in enumerate(units_list):
        if len(u) == 0:
            raise VocoderInputError(i, "empty unit sequence (nothing to vocode)")
        lo, hi = int(min(u)), int(max(u))
        if lo < 0 or hi >= n_units:
            bad = lo if lo < 0 else hi
            raise VocoderInputError(i, f"unit id {bad} is outside the embedding table [0, {n_units})")


def check_durations(units_list: list[list[int]], durations: list[list[int]] | None) -> None:
    if durations is None:
        return
    if len(durations) != len(units_list):
        raise ValueError(f"{len(durations)} duration lists for {len(units_list)} unit sequences")
    for i, (u, d) in enumerate(zip(units_list, durations)):
        if len(d) != len(u):
            raise VocoderInputError(i, f"{len(d)} durations for {len(u)} units")
        if len(d) and min(d) < 1:
            raise VocoderInputError(i, f"duration {min(d)} < 1")


def length_batches(lengths: list[int], batch_size: int, min_fill: float = 0.0) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding stays small.

    A batch is also closed when the next item is shorter than ``min_fill`` x the batch's longest: on a CPU
    a padded batch costs more than it saves (bench/RESULTS.md), so there only near-equal lengths share one.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < max(1, batch_size) and lengths[i] >= min_fill * lengths[out[-1][0]]:
            out[-1].append(i)
        else:
            out.append([i])
    return out


class HifiganVocoder:
    """``vocode(units_list, durations=None, speaker=None, f0=None) -> [waveform]`` over a loaded
    :class:`CodeGenerator`.

    Conditioning, as the checkpoint's config.json asks for it (:meth:`conditioning`):

    - ``multispkr`` (a speaker table): a speaker id, ``speaker=`` here (``vocoder.speaker``; 0 with a warning
      when not given, as before) or per call, one id for every item or a list of one id per item;
    - ``embedder_params`` (a speaker-embedding vector through a linear layer): ``speaker=`` a vector of
      ``embedder_dim`` floats (here, for every call, or per call), or per call an (N, embedder_dim) array
      with one vector per utterance; there is no default: vocoding without one is a :class:`ConditioningError`;
    - ``f0``: per call, ``f0=`` one F0 track per item (frames at the unit frame rate or an integer multiple
      of it after duration expansion; bin ids when the checkpoint quantises F0); required.
    """

    kind = "hifigan"

    def __init__(self, model: CodeGenerator, speaker: Any = None, batch_size: int = 16):
        self.model = model
        self.batch_size = batch_size
        self.sample_rate = int(model.cfg.get("sampling_rate", 16_000))
        self.n_units = int(model.cfg["num_embeddings"])
        if model.multispkr and not model.embedder and speaker is None:
            logger.warning("multi-speaker HiFi-GAN and no vocoder.speaker given: using speaker 0")
            speaker = 0
        if speaker is not None and not (model.multispkr or model.embedder):
            logger.warning("vocoder.speaker=%s ignored: this HiFi-GAN takes no speaker conditioning", _short(speaker))
            speaker = None
        self.speaker = None if speaker is None else self._speaker_tensor(speaker, None)
        if model.embedder and self.speaker is None:
            logger.warning("%s; vocode() fails without it", model.speaker_need())
        if model.f0:
            logger.warning("this HiFi-GAN is F0-conditioned: vocode() needs f0=[one track per item]")
        self.cond = BatchConditioning(spkr=self.speaker)
        if model.dur_predictor is None:
            logger.warning("this HiFi-GAN has no duration predictor: units are vocoded one frame each "
                           "unless durations are given")

    @classmethod
    def from_dir(cls, directory: str | Path, speaker: Any = None, batch_size: int = 16,
                 device: str = "cpu") -> HifiganVocoder:
        return cls(load_codegenerator(directory, device), speaker=speaker, batch_size=batch_size)

    def conditioning(self) -> dict[str, Any]:
        """What this checkpoint needs besides units: speaker ("id" | "embedding" | None) and its size, F0."""
        m = self.model
        kind = "embedding" if m.embedder else ("id" if m.multispkr else None)
        size = m.spkr.in_features if m.embedder else (m.spkr.num_embeddings if m.multispkr else None)
        return {"speaker": kind, "speaker_size": size, "f0": m.f0,
                "f0_bins": m.f0_quant_embed.num_embeddings if m.f0_quant_embed is not None else None}

    def _speaker_tensor(self, speaker: Any, n: int | None) -> torch.Tensor:
        """speaker -> (1,) / (n,) long ids or (1, D) / (n, D) float embeddings, checked against the checkpoint;
        ``n`` = the number of utterances of the call (None: one value for every call)."""
        m = self.model
        if not (m.multispkr or m.embedder):
            raise ConditioningError("this HiFi-GAN takes no speaker conditioning (config.json has neither "
                                    "multispkr nor embedder_params): leave speaker / vocoder.speaker unset")
        arr = np.asarray(speaker.detach().cpu() if isinstance(speaker, torch.Tensor) else speaker)
        if m.embedder:
            dim = m.spkr.in_features
            if arr.ndim == 0 or not np.issubdtype(arr.dtype, np.number) or arr.shape[-1] != dim or arr.ndim > 2:
                raise ConditioningError(f"speaker={_short(speaker)}: {m.speaker_need()}")
            arr = arr.reshape(-1, dim)
            if arr.shape[0] not in (1, n or 1):
                raise ConditioningError(f"{arr.shape[0]} speaker embeddings for {n} utterances (give one, or one "
                                        "per utterance)")
            if not np.isfinite(arr).all():
                raise ConditioningError("the speaker embedding has NaN or infinite values")
            return torch.as_tensor(arr, dtype=m.spkr.weight.dtype, device=m.spkr.weight.device)
        if arr.ndim > 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ConditioningError(f"speaker={_short(speaker)}: {m.speaker_need()}")
        arr = arr.reshape(-1)
        if arr.shape[0] not in (1, n or 1):
            raise ConditioningError(f"{arr.shape[0]} speaker ids for {n} utterances (give one, or one per utterance)")
        bad = [int(v) for v in arr if not 0 <= int(v) < m.spkr.num_embeddings]
        if bad:
            raise ConditioningError(f"speaker id {bad[0]} is outside [0, {m.spkr.num_embeddings}) of this checkpoint")
        return torch.as_tensor(arr, dtype=torch.long, device=m.spkr.weight.device)

    def _f0_tracks(self, f0: Any, n: int) -> list[torch.Tensor] | None:
        m = self.model
        if not m.f0:
            if f0 is not None:
                raise ConditioningError("this HiFi-GAN is not F0-conditioned (config.json f0 is false): leave f0 unset")
            return None
        if f0 is None:
            raise ConditioningError("this HiFi-GAN is F0-conditioned (config.json f0: true): pass one F0 track per "
                                    "item, vocode(..., f0=[track, ...])")
        if len(f0) != n:
            raise ConditioningError(f"{len(f0)} F0 tracks for {n} unit sequences")
        dev = m.dict.weight.device
        out = []
        for i, tr in enumerate(f0):
            t = torch.as_tensor(np.asarray(tr.detach().cpu() if isinstance(tr, torch.Tensor) else tr)).reshape(-1)
            if t.numel() == 0:
                raise VocoderInputError(i, "empty F0 track")
            if m.f0_quant_embed is not None:
                if t.is_floating_point() and not torch.equal(t, t.round()):
                    raise VocoderInputError(i, "this HiFi-GAN quantises F0: the track must hold bin ids")
                t = t.long()
                if int(t.min()) < 0 or int(t.max()) >= m.f0_quant_embed.num_embeddings:
                    raise VocoderInputError(i, f"F0 bin outside [0, {m.f0_quant_embed.num_embeddings})")
            elif not torch.isfinite(t.float()).all():
                raise VocoderInputError(i, "F0 track has NaN or infinite values")
            out.append(t.to(dev))
        return out

    @torch.inference_mode()
    def vocode(self, units_list: list[list[int]], durations: list[list[int]] | None = None,
               batch_size: int | None = None, *, speaker: Any = None, f0: Any = None) -> list[np.ndarray]:
        """A batch of unit sequences of different lengths -> one trimmed float32 waveform each.

        ``speaker``: overrides the constructor's (see the class doc): an id / a list of ids per item for a
        multi-speaker checkpoint, a vector / an (N, D) array for a speaker-embedding one.  ``f0``: one F0
        track per item for an F0-conditioned checkpoint.  Missing or ill-formed conditioning is a
        :class:`ConditioningError` before anything is vocoded.
        """
        check_units(units_list, self.n_units)
        check_durations(units_list, durations)
        n = len(units_list)
        spk = self._speaker_tensor(speaker, n) if speaker is not None else self.speaker
        if spk is None and (self.model.multispkr or self.model.embedder):
            raise ConditioningError(self.model.speaker_need())
        tracks = self._f0_tracks(f0, n)
        out: list[np.ndarray | None] = [None] * n
        dev = self.model.dict.weight.device
        min_fill = CPU_MIN_FILL if dev.type == "cpu" else 0.0
        for idx in length_batches([len(u) for u in units_list], batch_size or self.batch_size, min_fill):
            lengths = torch.tensor([len(units_list[i]) for i in idx])
            codes = nn.utils.rnn.pad_sequence([torch.tensor(units_list[i]) for i in idx], batch_first=True)
            if durations is not None:
                dur: Any = nn.utils.rnn.pad_sequence([torch.tensor(durations[i]) for i in idx], batch_first=True)
            else:
                dur = "predict" if self.model.dur_predictor is not None else None
            sel = torch.tensor(idx, device=spk.device) if spk is not None and spk.shape[0] > 1 else None
            cond = BatchConditioning(spkr=None if spk is None else (spk[sel] if sel is not None else spk),
                                     f0=None if tracks is None else [tracks[i] for i in idx])
            try:
                x, frames = self.model.features(codes.to(dev), lengths.to(dev), dur, cond)
            except VocoderInputError as e:
                raise VocoderInputError(idx[e.index], e.reason) from None
            wav = self.model.generate(x, frames.to(dev)).float().cpu().numpy()  # (B, T * hop)
            n_out = self.model.output_lengths(frames)
            for j, i in enumerate(idx):
                out[i] = wav[j, : int(n_out[j])].copy()
        return out  # type: ignore[return-value]


def _short(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 40 else r[:37] + "..."
