"""Which implementation each op runs and on which device: one table, one environment switch, one resolver
each (:func:`impl_for`, :func:`resolve_device`).

``ALIGNSLM_IMPL`` forces an implementation for every op that has it and leaves the others on their
automatic choice (``numpy``: the k-means quantizer's numpy path; sampling and DPO log-probs keep theirs).
A value no op knows is an error naming the valid ones, whichever op asks first. A forced implementation
that cannot run here is an error with the reason; an automatic choice never is.

Tests switch an op with :func:`forced` (a context manager) instead of clearing private caches.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping, Sequence

ENV = "ALIGNSLM_IMPL"

# op -> (its implementations, the automatic order of preference: the first that can run is taken)
OPS: dict[str, tuple[str, ...]] = {
    "sample": ("triton", "torch"),  # per-row temperature/top-k/top-p sampling (alignslm.kernels.sampling)
    "logprobs": ("triton", "torch"),  # fused linear + log-softmax for DPO (alignslm.kernels.logprobs)
    "kmeans": ("cpp", "numpy"),  # k-means assignment and fitting (alignslm.speech.quantizer, alignslm._C)
}
CHOICES = ("auto", *sorted({name for names in OPS.values() for name in names}))

_override: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar("alignslm_impl", default=())


class ImplError(ValueError):
    """An implementation was asked for that does not exist or cannot run here."""


def from_env() -> str | None:
    """The validated value of ``ALIGNSLM_IMPL`` (None for unset, empty or ``auto``)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in CHOICES:
        raise ImplError(f"{ENV}={value!r} is not valid: use one of {', '.join(CHOICES)} (or unset it)")
    return value


@contextlib.contextmanager
def forced(op: str, name: str) -> Iterator[None]:
    """Within the block, ``op`` runs ``name`` (for tests and benchmarks)."""
    if name not in OPS[op]:
        raise ImplError(f"op {op!r} has no implementation {name!r}: {', '.join(OPS[op])}")
    token = _override.set(_override.get() + ((op, name),))
    try:
        yield
    finally:
        _override.reset(token)


def triton_unavailable(device_type: str, have_triton: bool) -> str | None:
    """Why a Triton kernel cannot run on ``device_type`` tensors (None: it can). On a CPU only Triton's
    interpreter runs it (``TRITON_INTERPRET=1``, set before triton is imported): correctness, not speed."""
    if not have_triton:
        return "Triton is not installed (pip install triton, or alignslm[gpu])"
    if device_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"{device_type} tensors need TRITON_INTERPRET=1 (Triton's interpreter)"
    return None


def impl_for(op: str, unavailable: Mapping[str, str | None], requested: str | None = None,
             automatic: Sequence[str] | None = None) -> str:
    """The implementation ``op`` runs: ``requested`` > :func:`forced` > ``ALIGNSLM_IMPL`` > automatic.

    ``unavailable`` maps an implementation to why it cannot run here (None or absent: it can);
    ``automatic`` limits what the automatic choice may take (default: all of the op's, in order).
    """
    names = OPS[op]
    overrides = dict(_override.get())
    source = "argument"
    want = requested.strip().lower() if requested else None
    if want in (None, "auto"):
        want, source = overrides.get(op), "test override"
    if want is None:
        want, source = from_env(), ENV
        if want is not None and want not in names:
            want = None  # forces another op's implementation: this op keeps its automatic choice
    if want is None:
        for name in (names if automatic is None else [n for n in names if n in automatic]):
            if not unavailable.get(name):
                return name
        raise ImplError(f"no implementation of {op} can run here: "
                        + "; ".join(f"{n}: {unavailable.get(n)}" for n in names))
    if want not in names:
        raise ImplError(f"unknown impl {want!r} for {op} ({source}); expected {' | '.join(names)}")
    why = unavailable.get(want)
    if why:
        raise ImplError(f"{op}: {want} was asked for ({source}) but cannot run here: {why}")
    return want


def resolve_device(spec: str | None = "auto") -> str:
    """The one device rule (``run.device``): ``auto`` or None is ``cuda:<LOCAL_RANK>`` when torch sees a GPU
    (each torchrun process on its own GPU; ``cuda:0`` outside torchrun), else ``cpu``; any other value is
    returned as given.  Whisper (CTranslate2) has its own rule: alignslm.speech.asr.asr_device."""
    if spec is not None and str(spec) != "auto":
        return str(spec)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"
