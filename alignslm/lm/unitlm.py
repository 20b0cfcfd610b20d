"""The unit language model: any Hugging Face causal LM plus its unit <-> token-id mapping.

Unit ``k`` is token id ``k + offset``.  The offset and the special ids are read from the checkpoint's
``config.json`` (TWIST stores ``offset`` there) or given explicitly (slamkit-style models have no
``offset``: pad=0, bos=eos=1, unit k -> k+2).  ``support`` decides which tokens the softmax spans,
for sampling *and* for log-probs (DPO, evaluation): ``"units"`` = the units plus EOS, ``"full"`` = the
whole vocabulary.  :meth:`UnitLM.logprobs` is the one place that computes it.

    lm = UnitLM.from_pretrained("path/to/twist")              # offset from config.json
    lm = load_unitlm(run_dir / "unitlm", adapters=[run_dir / "round-1/train"])
    scores = lm.score_sequences([[3, 17, 17, 42], [5, 9]], reduce="mean")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignslm import logger

SLAMKIT_OFFSET, SLAMKIT_PAD, SLAMKIT_BOS = 2, 0, 1  # slamkit: pad=0, bos=eos=1, unit k -> k+2
SUPPORTS = ("units", "full")


def context_of(config: Any) -> int | None:
    """Maximum sequence length of an HF config (object or config.json dict), if it states one."""
    get = config.get if isinstance(config, dict) else (lambda k: getattr(config, k, None))
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = get(key)
        if isinstance(v, int) and v > 0:
            return v
    return None


class UnitLMError(ValueError):
    """A unit LM checkpoint, its unit mapping or a unit sequence is wrong; the message says how to fix it."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """:func:`alignslm.impl.resolve_device` as a torch.device (``auto``/None: the GPU when there is one)."""
    from alignslm.impl import resolve_device as device_rule

    return torch.device(device_rule(None if device is None else str(device)))


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on a CUDA device that supports it, float32 otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise UnitLMError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


class UnitLM:
    """A causal LM over units.  ``model`` is the HF model (``model(input_ids).logits`` is (B, T, V))."""

    def __init__(self, model: Any, *, offset: int, n_units: int, bos_id: int | None, eos_id: int | None,
                 pad_id: int | None, support: str = "units", source: str = "") -> None:
        vocab = int(model.get_output_embeddings().weight.shape[0])
        if support not in SUPPORTS:
            raise UnitLMError(f"support must be one of {SUPPORTS}, got {support!r} (config key unitlm.support)")
        if offset < 0 or n_units < 1 or offset + n_units - 1 >= vocab:
            raise UnitLMError(
                f"{source or 'unit LM'}: offset {offset} + n_units {n_units} - 1 must be < vocab_size {vocab}; "
                f"check unitlm.offset / unitlm.n_units against the checkpoint's config.json")
        for name, tid in (("bos", bos_id), ("eos", eos_id), ("pad", pad_id)):
            if tid is not None and not 0 <= tid < vocab:
                raise UnitLMError(f"{source or 'unit LM'}: {name}_id {tid} is outside the vocabulary (size {vocab})")
        self.model = model
        self.offset, self.n_units, self.vocab_size = int(offset), int(n_units), vocab
        self.bos_id, self.eos_id = bos_id, eos_id
        self.pad_id = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
        self.support = support
        self.source = source
        ids = list(range(self.offset, self.offset + self.n_units))
        if eos_id is not None and not self.offset <= eos_id < self.offset + self.n_units:
            ids.append(int(eos_id))
        # Token ids of the softmax support, in order: units first, then EOS.  (S,)
        self.support_ids = torch.tensor(ids if support == "units" else range(vocab), dtype=torch.long)

    # ------------------------------------------------------------------ mapping
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def units_to_ids(self, units: Sequence[int] | np.ndarray | torch.Tensor) -> list[int] | torch.Tensor:
        """Units -> token ids (a tensor stays a tensor).  Out-of-range units are an error."""
        if isinstance(units, torch.Tensor):
            if units.numel() and (int(units.min()) < 0 or int(units.max()) >= self.n_units):
                raise UnitLMError(self._range_msg(units.min().item(), units.max().item()))
            return units.long() + self.offset
        arr = np.asarray(units, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_units):
            raise UnitLMError(self._range_msg(int(arr.min()), int(arr.max())))
        return (arr + self.offset).tolist()

    def encode_checked(self, seqs: Sequence[Sequence[int]], *, what: str = "sequence", bos: bool = True,
                       eos: bool = False, min_tokens: int = 1, reserve: int = 0, purpose: str = "",
                       hint: str = "", length_error: type[Exception] = UnitLMError) -> list[list[int]]:
        """Unit sequences -> token id lists ``[BOS?, ids..., EOS?]``, every check done before any model call.

        Errors name the item (``f"{what} {i}"``): a unit outside ``[0, n_units)`` is a :class:`UnitLMError`;
        fewer than ``min_tokens`` tokens, or more than the model's context less ``reserve`` (room kept for
        tokens generated after it; ``hint`` says what to change), raise ``length_error`` (the sampler's is
        SamplingError).  Used by :meth:`score_sequences` and alignslm.lm.sampler.validate.
        """
        for flag, tid, name in ((bos, self.bos_id, "BOS"), (eos, self.eos_id, "EOS")):
            if flag and tid is None:
                raise UnitLMError(f"{self.source}: the model has no {name} id")
        ctx = self.max_context()
        tags = [name for flag, name in ((bos, "BOS"), (eos, "EOS")) if flag]
        out = []
        for i, u in enumerate(seqs):
            try:
                ids = self.units_to_ids(list(u))
            except UnitLMError as e:
                raise UnitLMError(f"{what} {i}: {e}") from None
            ids = ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])
            with_ = f" (with {' and '.join(tags)})" if tags else ""
            if len(ids) < min_tokens:
                raise length_error(f"{what} {i} has {len(ids)} token(s){with_}; at least {min_tokens} needed"
                                   f"{' ' + purpose if purpose else ''}")
            if ctx is not None and len(ids) + reserve > ctx:
                room = f" + {reserve} to generate" if reserve else ""
                raise length_error(f"{what} {i} has {len(ids)} tokens{with_}{room}, more than the model's context "
                                   f"({ctx}){'; ' + hint if hint else ''}")
            out.append(ids)
        return out

    def ids_to_units(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> list[int] | torch.Tensor:
        """Token ids -> units.  An id that is not a unit (a special or text token) is an error."""
        if isinstance(ids, torch.Tensor):
            u = ids.long() - self.offset
            if u.numel() and (int(u.min()) < 0 or int(u.max()) >= self.n_units):
                raise UnitLMError(f"token ids {ids.min().item()}..{ids.max().item()} are not all units "
                                  f"(units are ids {self.offset}..{self.offset + self.n_units - 1})")
            return u
        arr = np.asarray(ids, dtype=np.int64) - self.offset
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_units):
            bad = [int(i) for i in np.asarray(ids)[(arr < 0) | (arr >= self.n_units)][:5]]
            raise UnitLMError(f"token ids {bad} are not units (units are ids {self.offset}.."
                              f"{self.offset + self.n_units - 1}); strip BOS/EOS/pad before mapping")
        return arr.tolist()

    def _range_msg(self, lo: int, hi: int) -> str:
        return (f"unit ids must be in [0, {self.n_units}) for this LM ({self.source or 'unit LM'}), got range "
                f"[{lo}, {hi}]; the tokenizer's K and the LM's n_units (unitlm.n_units) must agree")

    # ------------------------------------------------------------------ log-probs
    def logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-softmax over the configured support.  (..., V) -> (..., V) float32, -inf outside it."""
        logits = logits.float()
        if self.support == "full":
            return torch.log_softmax(logits, dim=-1)
        sup = self.support_ids.to(logits.device)
        out = torch.full_like(logits, float("-inf"))
        out[..., sup] = torch.log_softmax(logits[..., sup], dim=-1)
        return out

    def token_logprobs(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(target) under the support: logits (..., V), targets (...) -> (...) float32.

        Same numbers as ``logprobs(logits).gather(-1, targets)`` without materialising the full output.
        A target outside the support gets -inf.
        """
        logits = logits.float()
        if self.support == "full":
            lse = torch.logsumexp(logits, dim=-1)  # (...)
        else:
            lse = torch.logsumexp(logits[..., self.support_ids.to(logits.device)], dim=-1)
        tok = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
        if self.support == "units":
            inside = self.support_mask(logits.device)[targets]
            tok = torch.where(inside, tok, torch.full_like(tok, float("-inf")))
        return tok

    def support_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(V,) bool, True for the tokens in the softmax support."""
        mask = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
        mask[self.support_ids.to(device)] = True
        return mask

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score_sequences(self, units: Sequence[Sequence[int]], *, add_bos_eos: bool = True, reduce: str = "sum",
                        batch_size: int = 32) -> np.ndarray:
        """Log-likelihood of each ``[BOS, units, EOS]`` (N,) float64; ``reduce`` = sum | mean (per predicted token).

        Batched with sequences sorted by length (right padding + attention mask); the order of the
        result matches the input.  A sequence longer than the model's context is an error.
        """
        if reduce not in ("sum", "mean"):
            raise UnitLMError(f"reduce must be 'sum' or 'mean', got {reduce!r} (config key eval.score)")
        if add_bos_eos and (self.bos_id is None or self.eos_id is None):
            raise UnitLMError(f"{self.source}: the model has no bos/eos id; pass add_bos_eos=False")
        seqs = self.encode_checked(units, what="sequence", bos=add_bos_eos, eos=add_bos_eos, min_tokens=2,
                                   purpose="to score it")
        order = np.argsort([len(s) for s in seqs], kind="stable")
        out = np.zeros(len(seqs), dtype=np.float64)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                out[idx] = self._score_batch([seqs[i] for i in idx], reduce)
        finally:
            self.model.train(was_training)
        return out

    def _score_batch(self, seqs: list[list[int]], reduce: str) -> np.ndarray:
        dev = self.device
        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)  # (B, T)
        for b, s in enumerate(seqs):
            ids[b, :len(s)] = torch.tensor(s)
            mask[b, :len(s)] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
        tok = self.token_logprobs(logits, ids[:, 1:])  # (B, T-1)
        valid = mask[:, 1:].bool()
        tok = torch.where(valid, tok, torch.zeros_like(tok))
        total = tok.sum(-1).double()  # (B,)
        if reduce == "mean":
            total = total / valid.sum(-1).double()
        return total.cpu().numpy()

    def max_context(self) -> int | None:
        """The model's maximum sequence length (max_position_embeddings), if it has one."""
        return context_of(self.model.config)

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(cls, path: str | Path, *, offset: int | None = None, n_units: int | None = None,
                        support: str = "units", dtype: str | torch.dtype = "auto",
                        device: str | torch.device = "cpu", bos_id: int | None = None,
                        eos_id: int | None = None, pad_id: int | None = None) -> UnitLM:
        """Load an HF causal LM directory and its unit mapping (see the module docstring)."""
        from alignslm.deps import require

        require("transformers")
        from transformers import AutoConfig, AutoModelForCausalLM

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise UnitLMError(f"{path}: not a Hugging Face model directory (no config.json); "
                              f"set unitlm.path to a directory saved with save_pretrained")
        config = AutoConfig.from_pretrained(path)
        ids = special_ids(config, offset)
        offset = ids.pop("offset")
        for k, v in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
            if v is not None:
                ids[k] = v
        if n_units is None:
            n_units = int(getattr(config, "n_units", 0) or 0) or int(config.vocab_size) - offset
        dev = resolve_device(device)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, dev)).to(dev)
        model.eval()
        logger.info("unit LM %s: %s, offset %d, %d units, support %s", path, type(model).__name__, offset,
                    n_units, support)
        return cls(model, offset=offset, n_units=n_units, support=support, source=str(path), **ids)

    def save_pretrained(self, path: str | Path) -> None:
        """Save the model with ``offset``/``n_units`` (and the special ids) in config.json (TWIST's convention),
        so that ``UnitLM.from_pretrained(path)`` reads the same mapping back."""
        self.model.config.offset = self.offset
        self.model.config.n_units = self.n_units
        for key, v in (("bos_token_id", self.bos_id), ("eos_token_id", self.eos_id), ("pad_token_id", self.pad_id)):
            if v is not None:
                setattr(self.model.config, key, v)
        self.model.save_pretrained(path)

    def meta(self) -> dict:
        """The mapping, for unitlm.json."""
        return {"offset": self.offset, "n_units": self.n_units, "bos_id": self.bos_id, "eos_id": self.eos_id,
                "pad_id": self.pad_id, "support": self.support, "vocab_size": self.vocab_size}


def special_ids(config: Any, offset: int | None) -> dict:
    """offset/bos/eos/pad from the config (TWIST) or the slamkit convention when it has no offset."""
    cfg_offset = getattr(config, "offset", None)
    if offset is None and cfg_offset is None:
        return {"offset": SLAMKIT_OFFSET, "bos_id": SLAMKIT_BOS, "eos_id": SLAMKIT_BOS, "pad_id": SLAMKIT_PAD}
    bos, eos, pad = (getattr(config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id"))
    if isinstance(eos, (list, tuple)):
        eos = eos[0]
    return {"offset": int(offset if offset is not None else cfg_offset), "bos_id": bos, "eos_id": eos,
            "pad_id": pad}


def load_unitlm(unitlm_dir: str | Path, adapters: Sequence[str | Path] = (), merge: bool = True, *,
                support: str | None = None, device: str | torch.device = "cpu",
                dtype: str | torch.dtype = "auto") -> UnitLM:
    """Load the unit LM described by ``<unitlm_dir>/unitlm.json`` and apply LoRA adapters in order.

    ``adapters``: ``round-N/train`` directories (their ``adapter/`` is used) or adapter directories.
    Every adapter but the last is merged into the weights; the last is merged when ``merge`` is true
    (a frozen policy/reference), else left as a trainable-looking ``PeftModel`` layer.
    """
    meta_path = Path(unitlm_dir) / "unitlm.json"
    if not meta_path.is_file():
        raise UnitLMError(f"{meta_path} not found; run the unitlm stage first")
    meta = json.loads(meta_path.read_text())
    path = Path(unitlm_dir) / meta["path"]  # relative to unitlm_dir (the demo's model/), or an external model
    lm = UnitLM.from_pretrained(path, offset=meta.get("offset"), n_units=meta.get("n_units"),
                                support=support or meta.get("support", "units"), device=device, dtype=dtype,
                                bos_id=meta.get("bos_id"), eos_id=meta.get("eos_id"), pad_id=meta.get("pad_id"))
    for i, a in enumerate(adapters):
        lm.model = _apply_adapter(lm.model, Path(a), merge=merge or i < len(adapters) - 1)
    lm.model.eval()
    return lm


def _apply_adapter(model: Any, path: Path, merge: bool) -> Any:
    from peft import PeftModel

    adir = path / "adapter" if (path / "adapter" / "adapter_config.json").is_file() else path
    if not (adir / "adapter_config.json").is_file():
        raise UnitLMError(f"{path}: no peft adapter here (expected adapter/adapter_config.json); "
                          f"was the train stage of that round finished?")
    model = PeftModel.from_pretrained(model, adir)
    logger.info("applied LoRA adapter %s (%s)", adir, "merged" if merge else "kept separate")
    return model.merge_and_unload() if merge else model


def lm_unit_problems(k: int, config: Any, n_units: int | None, offset: int | None, lm: Any, quantizer: Any
                     ) -> list[str]:
    """The checks that an external LM models the quantizer's K units: unitlm.n_units == K, and the unit
    tokens fit the vocabulary (offset + n_units - 1 < vocab_size).  [] when both hold.

    ``config``: the LM's config (a transformers config, or config.json as a namespace); ``n_units``/``offset``:
    the unitlm.* overrides (None = from the config, as :func:`special_ids` reads it).
    One function for both callers: ``--dry-run`` (alignslm.run.cross_checks, config.json and the .npy
    header) and the unitlm stage (an external LM).
    """
    n = n_units if n_units is not None else k
    off = special_ids(config, offset)["offset"]
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    problems = []
    if n != k:
        problems.append(f"unitlm.n_units={n} but the quantizer ({quantizer}) has K={k} units; "
                        "use the LM's own k-means (tokenize.quantizer)")
    if off + n - 1 >= vocab:
        problems.append(f"unitlm.path={lm}: offset {off} + n_units {n} - 1 >= vocab_size {vocab}: "
                        f"this LM was trained on fewer units than the quantizer produces")
    return problems
