"""Next-token sampling: per-row temperature, top-k and top-p, seeded with a counter-based generator.

One public function, :func:`sample_next`, picks the implementation once: the Triton kernel when Triton
is importable and the logits live on a GPU (or ``TRITON_INTERPRET=1``), else the pure-torch reference
below, which is also the CPU path.  ``ALIGNSLM_IMPL=torch|triton`` forces one.

The rule, identical in both implementations, for one row with logits ``x`` (V,):

1. ``x = x / temperature``.
2. top-k: keep the tokens whose value is >= the k-th largest value (ties at the boundary are kept,
   like transformers' ``TopKLogitsWarper``); ``k >= V`` keeps all.
3. ``e = exp(x - max x)`` on the kept tokens, 0 elsewhere; ``Z = sum e``.
4. top-p: keep token j iff the mass of the tokens strictly more probable than j is < ``p * Z`` (the
   smallest prefix of the sorted distribution whose mass reaches p; ``p = 1`` keeps all).
5. Draw ``u`` in [0, 1) from ``uniform(seed, step)`` and return the first index (in vocabulary
   order) whose cumulative kept mass exceeds ``u * Z'``.

``uniform(seed, step)`` is a counter-based hash (three rounds of the "lowbias32" integer mixer over the
two 32-bit halves of the seed and the step), 24 random bits -> an exact float32.  A row's draw depends
only on (its seed, its step, its logits): batching, sharding and resuming do not change samples.
The Triton launch reads ``step`` from a device tensor, so a decode step needs no host synchronisation
and can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from alignslm.impl import impl_for, triton_unavailable

M32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9
MIX1, MIX2 = 0x7FEB352D, 0x846CA68B
INV_2_24 = 1.0 / (1 << 24)

try:  # Triton is optional: without it (or without a GPU) the torch path is used.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_TRITON = False


class SamplingError(ValueError):
    """Bad sampling parameters (temperature, top-k, top-p, seeds); the message names the bad value."""


# --------------------------------------------------------------------------------------------------
# The counter-based generator (torch; the Triton kernel repeats the same integer operations)
# --------------------------------------------------------------------------------------------------


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding uint32 values (products wrap; the low 32 bits are exact)."""
    x = x ^ (x >> 16)
    x = (x * MIX1) & M32
    x = x ^ (x >> 15)
    x = (x * MIX2) & M32
    return x ^ (x >> 16)


def uniform(seed: torch.Tensor, step: torch.Tensor | int) -> torch.Tensor:
    """(B,) int64 seeds, step (B,) or scalar -> (B,) float32 uniforms in [0, 1) with 24 random bits."""
    seed = seed.long()
    step = torch.as_tensor(step, dtype=torch.long, device=seed.device)
    lo, hi = seed & M32, (seed >> 32) & M32
    h = _mix32((lo + GOLDEN) & M32)
    h = _mix32(h ^ hi)
    h = _mix32(h ^ (step & M32))
    return (h >> 8).float() * INV_2_24


# --------------------------------------------------------------------------------------------------
# Parameter checks (once per batch, before generation: they synchronise with the host)
# --------------------------------------------------------------------------------------------------


def check_params(temperature: torch.Tensor | float, top_k: torch.Tensor | int, top_p: torch.Tensor | float) -> None:
    """Raise :class:`SamplingError` for temperature <= 0, top_k < 1 or top_p outside (0, 1] (or NaN)."""
    t = torch.as_tensor(temperature, dtype=torch.float64)
    k = torch.as_tensor(top_k)
    p = torch.as_tensor(top_p, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise SamplingError(f"temperature must be a finite number > 0, got {_worst(t, t <= 0)} "
                            f"(sample.temperature; use a small value such as 1e-3 for near-greedy)")
    if k.is_floating_point() or bool((k < 1).any()):
        raise SamplingError(f"top_k must be an integer >= 1, got {_worst(k, k < 1)} "
                            f"(sample.top_k; a value >= the vocabulary size disables top-k)")
    if not bool(torch.isfinite(p).all()) or bool(((p <= 0) | (p > 1)).any()):
        raise SamplingError(f"top_p must be in (0, 1], got {_worst(p, (p <= 0) | (p > 1))} "
                            f"(sample.top_p; 1.0 disables top-p)")


def _worst(v: torch.Tensor, bad: torch.Tensor) -> object:
    v = v.flatten()
    bad = bad.flatten() | ~torch.isfinite(v.double())
    return v[bad][0].item() if bool(bad.any()) else v[0].item()


def _rows(v: torch.Tensor | float | int, B: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=dtype, device=device)
    return t.expand(B).contiguous() if t.dim() == 0 else t


# --------------------------------------------------------------------------------------------------
# The torch reference (the CPU path)
# --------------------------------------------------------------------------------------------------


def truncated_probs(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                    top_p: torch.Tensor) -> torch.Tensor:
    """The truncated, renormalised distribution of the rule above.  (B, V) -> (B, V) float32."""
    q = _kept_mass(logits, temperature, top_k, top_p)
    return q / q.sum(-1, keepdim=True)


def _kept_mass(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
               top_p: torch.Tensor) -> torch.Tensor:
    """Unnormalised kept mass e_j (0 for dropped tokens).  (B, V) -> (B, V) float32."""
    x = logits.float() / temperature.float().unsqueeze(-1)  # (B, V)
    V = x.shape[-1]
    # Only the K = max(top_k) largest values are needed in sorted order (a host read of top_k: fine on the
    # CPU path).  Exactly the full sort's result: past K every sorted position is either a tie with some
    # row's k-th value or has zero kept mass, and neither can change the top-p threshold below.
    kmax = min(int(top_k.max()), V) if top_k.numel() else V
    xs = torch.topk(x, kmax, dim=-1).values if kmax < V else torch.sort(x, dim=-1, descending=True).values  # (B, K)
    kth = xs.gather(-1, (top_k.long().clamp(1, V) - 1).unsqueeze(-1))  # (B, 1)
    keep_k = x >= kth  # (B, V)
    e = torch.where(keep_k, torch.exp(x - xs[:, :1]), torch.zeros_like(x))  # (B, V)
    es = torch.where(xs >= kth, torch.exp(xs - xs[:, :1]), torch.zeros_like(xs))  # sorted e (B, K)
    z = e.sum(-1, keepdim=True)  # (B, 1)
    before = torch.cumsum(es, -1) - es  # mass strictly before each sorted position (B, K)
    kept_sorted = before < top_p.float().unsqueeze(-1) * z  # a prefix (B, K)
    n_keep = kept_sorted.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
    thresh = es.gather(-1, n_keep - 1)  # smallest kept value (B, 1)
    return torch.where(e >= thresh, e, torch.zeros_like(e))


def sample_torch(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                 seed: torch.Tensor, step: torch.Tensor | int, u: torch.Tensor | None = None) -> torch.Tensor:
    """Reference sampler.  logits (B, V) -> (B,) int64 indices.  ``u`` (B,) overrides the generator."""
    q = _kept_mass(logits, temperature, top_k, top_p)  # (B, V)
    if u is None:
        u = uniform(seed, step)
    cdf = torch.cumsum(q, -1)  # (B, V)
    target = u.to(cdf.device).float() * cdf[:, -1]  # (B,)
    idx = (cdf <= target.unsqueeze(-1)).sum(-1)  # first index whose cdf exceeds the target (B,)
    ar = torch.arange(q.shape[-1], device=q.device)
    last = torch.where(q > 0, ar, torch.zeros_like(ar)).amax(-1)  # last kept index (B,)
    return torch.minimum(idx, last)


# --------------------------------------------------------------------------------------------------
# The Triton kernel: one program per row, the whole row in registers
# --------------------------------------------------------------------------------------------------

if HAVE_TRITON:

    @triton.jit
    def _mix32_tl(x):
        x = x ^ (x >> 16)
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x = x ^ (x >> 15)
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    @triton.jit
    def _sample_kernel(logits_ptr, stride_b, temp_ptr, topk_ptr, topp_ptr, seed_ptr, step_ptr, u_ptr, out_ptr,
                       V, STEP_PER_ROW: tl.constexpr, HAS_U: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        valid = cols < V
        x = tl.load(logits_ptr + row * stride_b + cols, mask=valid, other=float("-inf")).to(tl.float32)
        x = x / tl.load(temp_ptr + row)
        k = tl.load(topk_ptr + row).to(tl.int64)
        p = tl.load(topp_ptr + row)
        xmax = tl.max(x, 0)
        # top-k: exact k-th largest value by bisection on order-preserving integer keys of the floats
        bits = x.to(tl.int32, bitcast=True).to(tl.int64)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        keep = valid
        if k < V:
            lo = tl.min(tl.where(valid, key, 0x7FFFFFFF), 0)  # count(key >= lo) >= k
            hi = tl.max(tl.where(valid, key, -0x80000000), 0) + 1  # count(key >= hi) = 0 < k
            for _ in range(33):
                mid = lo + (hi - lo) // 2
                c = tl.sum(((key >= mid) & valid).to(tl.int64), 0)
                lo = tl.where(c >= k, mid, lo)
                hi = tl.where(c >= k, hi, mid)
            keep = valid & (key >= lo)
        e = tl.where(keep, tl.exp(x - xmax), 0.0)
        z = tl.sum(e, 0)
        if p < 1.0:
            # top-p: smallest value d such that the mass strictly above d is < p * z (e >= 0: bits order)
            ebits = e.to(tl.int32, bitcast=True).to(tl.int64)
            target_mass = p * z
            plo = tl.zeros([], dtype=tl.int64) - 1
            phi = tl.max(tl.where(keep, ebits, 0), 0)
            for _ in range(32):
                mid = plo + (phi - plo) // 2
                m = tl.sum(tl.where(ebits > mid, e, 0.0), 0)
                phi = tl.where(m < target_mass, mid, phi)
                plo = tl.where(m < target_mass, plo, mid)
            e = tl.where(ebits >= phi, e, 0.0)
        if HAS_U:
            u = tl.load(u_ptr + row)
        else:
            seed = tl.load(seed_ptr + row).to(tl.int64)
            if STEP_PER_ROW:
                step = tl.load(step_ptr + row).to(tl.int64)
            else:
                step = tl.load(step_ptr).to(tl.int64)
            h = _mix32_tl(((seed & 0xFFFFFFFF) + 0x9E3779B9) & 0xFFFFFFFF)
            h = _mix32_tl(h ^ ((seed >> 32) & 0xFFFFFFFF))
            h = _mix32_tl(h ^ (step & 0xFFFFFFFF))
            u = (h >> 8).to(tl.float32) * (1.0 / 16777216.0)
        cdf = tl.cumsum(e, 0)
        target = u * tl.max(cdf, 0)
        idx = tl.sum(((cdf <= target) & valid).to(tl.int64), 0)
        last = tl.max(tl.where(e > 0, cols, 0), 0).to(tl.int64)
        tl.store(out_ptr + row, tl.minimum(idx, last))


def sample_triton(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  seed: torch.Tensor, step: torch.Tensor | int, u: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton kernel (one launch).  logits (B, V) -> (B,) int64.  ``step`` may be a device tensor."""
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed; pip install triton (alignslm[gpu]) or set ALIGNSLM_IMPL=torch")
    B, V = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    dev = logits.device
    step_t = step if isinstance(step, torch.Tensor) else torch.tensor(step, dtype=torch.long, device=dev)
    out = torch.empty(B, dtype=torch.long, device=dev)
    block = max(16, triton.next_power_of_2(V))
    _sample_kernel[(B,)](logits, logits.stride(0), temperature.float().contiguous(), top_k.contiguous(),
                         top_p.float().contiguous(), seed.long().contiguous(), step_t.long(),
                         u.float().contiguous() if u is not None else out, out, V,
                         STEP_PER_ROW=step_t.dim() > 0, HAS_U=u is not None, BLOCK=block,
                         num_warps=4 if block <= 1024 else 8)
    return out


# --------------------------------------------------------------------------------------------------
# The public function
# --------------------------------------------------------------------------------------------------

def pick_impl(device: torch.device | str) -> str:
    """'triton' or 'torch' for logits on ``device`` (alignslm.impl: ALIGNSLM_IMPL or a test override forces
    one; automatic: Triton for CUDA tensors when installed, the torch reference otherwise)."""
    dev_type = torch.device(device).type
    return impl_for("sample", {"triton": triton_unavailable(dev_type, HAVE_TRITON)},
                    automatic=("triton", "torch") if dev_type == "cuda" else ("torch",))


def sample_next(logits: torch.Tensor, temperature: torch.Tensor | float, top_k: torch.Tensor | int,
                top_p: torch.Tensor | float, seed: torch.Tensor | int, step: torch.Tensor | int, *,
                validate: bool = True, impl: str | None = None) -> torch.Tensor:
    """Sample one index per row.  logits (B, V); per-row (B,) or scalar params -> (B,) int64 in [0, V).

    ``validate=False`` skips :func:`check_params` (a host sync); the decode loop validates once up front.
    """
    if logits.dim() != 2:
        raise SamplingError(f"logits must be (B, V), got shape {tuple(logits.shape)}")
    if validate:
        check_params(temperature, top_k, top_p)
    B, dev = logits.shape[0], logits.device
    t = _rows(temperature, B, torch.float32, dev)
    k = _rows(top_k, B, torch.int64, dev)
    p = _rows(top_p, B, torch.float32, dev)
    s = _rows(seed, B, torch.int64, dev)
    fn = sample_triton if (impl or pick_impl(dev)) == "triton" else sample_torch
    return fn(logits, t, k, p, s, step)
