"""Sequence log-probabilities for DPO: log-softmax + gather + masked sum, optionally fused with lm_head.

DPO needs, for every sequence, ``sum_t mask[t] * log softmax(logits[t])[target[t]]`` over the completion
tokens only.  Three ways to get it, all with fp32 accumulation:

* :func:`reference_sequence_logprobs` -- plain torch on full ``(B, T, V)`` logits; the test oracle (run it
  in fp64) and the shape of the computation ``torch.compile`` is benchmarked on.
* :func:`sequence_logprobs` -- same result from given logits, but only the masked rows are normalised
  (``N`` completion tokens instead of ``B*T``), with a Triton row kernel on GPU.
* :func:`fused_linear_sequence_logprobs` -- from the last hidden states and the lm_head weight: the logits
  of the masked rows are built in chunks of ``chunk_rows`` rows, so the ``(B, T, V)`` tensor never exists.
  When the lm_head is frozen (LoRA) the gradient w.r.t. the hidden states is computed in the forward
  pass (``(onehot - softmax) @ W``, one row scale left for backward), so backward needs no second matmul;
  a trainable lm_head switches to recomputing the chunks in backward.

``lo:hi`` restricts the softmax support to a contiguous slice of the vocabulary (the unit range of a
unit LM whose lm_head also spans text tokens); targets are given as vocabulary ids and must fall in it.

Implementation choice (alignslm.impl, one resolver for every op): ``impl=None`` picks Triton for CUDA
tensors when Triton imports, torch otherwise; ``ALIGNSLM_IMPL=torch|triton`` overrides, and
``TRITON_INTERPRET=1`` lets the Triton path run on CPU tensors (tests).
"""

from __future__ import annotations

import torch

from alignslm.impl import impl_for, triton_unavailable

try:  # Triton is optional: the torch path is the CPU path and the reference.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAS_TRITON = False


# --------------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------------


def reference_sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                                lo: int = 0, hi: int | None = None) -> torch.Tensor:
    """Plain torch: ``(B, T, V)`` logits, ``(B, T)`` target ids and mask -> ``(B,)`` summed log-probs.

    ``logits[b, t]`` is the distribution of ``targets[b, t]`` (already shifted).  Computes in fp64 when
    the logits are fp64, fp32 otherwise.
    """
    x = logits[..., lo:hi]  # (B, T, Vs)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(x.to(acc), dim=-1)  # (B, T, Vs)
    t = (targets - lo).clamp(0, x.shape[-1] - 1)  # masked-out positions may hold pad ids
    tok = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (tok * mask.to(acc)).sum(-1)  # (B,)


# --------------------------------------------------------------------------------------------------
# Implementation choice
# --------------------------------------------------------------------------------------------------


def pick_impl(device: torch.device, impl: str | None = None) -> str:
    """'torch' or 'triton' for tensors on ``device``: ``impl`` > alignslm.impl (ALIGNSLM_IMPL, test override) >
    automatic (Triton for CUDA tensors when installed)."""
    return impl_for("logprobs", {"triton": triton_unavailable(device.type, HAS_TRITON)}, requested=impl,
                    automatic=("triton", "torch") if device.type == "cuda" else ("torch",))


# --------------------------------------------------------------------------------------------------
# Row kernels: (N, V) logits rows + (N,) targets -> (N,) log-probs and optionally (onehot - softmax)
# --------------------------------------------------------------------------------------------------


def _rows_torch(x: torch.Tensor, t: torch.Tensor, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = x.float()  # (N, V)
    lse = torch.logsumexp(x, dim=-1)  # (N,)
    logp = x.gather(1, t.unsqueeze(1)).squeeze(1) - lse  # (N,)
    if not with_grad:
        return logp, None
    g = torch.exp(x - lse.unsqueeze(1)).neg_()  # (N, V) = -softmax
    g.scatter_add_(1, t.unsqueeze(1), torch.ones_like(logp).unsqueeze(1))  # + onehot
    return logp, g


if HAS_TRITON:

    @triton.jit
    def _row_logprob_kernel(X, stride_x, T, OUT, G, stride_g, V, BLOCK: tl.constexpr, WITH_GRAD: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_ptr = X + row * stride_x
        t = tl.load(T + row)
        m = float("-inf")
        s = 0.0
        for start in range(0, V, BLOCK):  # online log-sum-exp over the row
            offs = start + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, 0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
            m = m_new
        lse = m + tl.log(s)
        xt = tl.load(x_ptr + t).to(tl.float32)
        tl.store(OUT + row, xt - lse)
        if WITH_GRAD:  # d logp / d x = onehot(t) - softmax(x)
            g_ptr = G + row * stride_g
            for start in range(0, V, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                x = tl.load(x_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
                p = tl.exp(x - lse)
                g = tl.where(offs == t, 1.0 - p, -p)
                tl.store(g_ptr + offs, g.to(G.dtype.element_ty), mask=offs < V)


def _rows_triton(x: torch.Tensor, t: torch.Tensor, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    n, v = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    out = torch.empty(n, dtype=torch.float32, device=x.device)
    # the gradient is written in the logits' dtype (bf16 logits -> bf16 gradient, as torch autograd would)
    g = torch.empty(n, v, dtype=x.dtype, device=x.device) if with_grad else out
    if n == 0:
        return out, (g if with_grad else None)
    block = min(4096, triton.next_power_of_2(v))
    _row_logprob_kernel[(n,)](x, x.stride(0), t.contiguous(), out, g, g.stride(0) if with_grad else 0, v,
                              BLOCK=block, WITH_GRAD=with_grad, num_warps=4 if block <= 2048 else 8)
    return out, (g if with_grad else None)


def _rows(x: torch.Tensor, t: torch.Tensor, with_grad: bool, impl: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    return _rows_triton(x, t, with_grad) if impl == "triton" else _rows_torch(x, t, with_grad)


class _RowLogprobs(torch.autograd.Function):
    """(N, V) logits rows -> (N,) log-probs; the gradient (onehot - softmax) is made in the forward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, t: torch.Tensor, impl: str) -> torch.Tensor:  # noqa: ANN001
        with_grad = x.requires_grad
        logp, g = _rows(x, t, with_grad, impl)
        if with_grad:
            ctx.save_for_backward(g)
            ctx.x_dtype = x.dtype
        return logp

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN001, ANN205
        (g,) = ctx.saved_tensors
        return (g * grad_out.float().unsqueeze(1)).to(ctx.x_dtype), None, None


# --------------------------------------------------------------------------------------------------
# Fused lm_head
# --------------------------------------------------------------------------------------------------


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    logits = h @ w.t()  # (n, Vs) in the weights' dtype
    if b is not None:
        logits = logits + b
    return logits


class _FusedLinearLogprobs(torch.autograd.Function):
    """(N, H) hidden rows, (Vs, H) weight slice -> (N,) log-probs, chunked over rows."""

    @staticmethod
    def forward(ctx, h, w, b, t, chunk, impl):  # noqa: ANN001, ANN205
        n = h.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=h.device)
        need_h = h.requires_grad
        recompute = w.requires_grad or (b is not None and b.requires_grad)
        grad_h = torch.empty_like(h) if need_h and not recompute else None
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            logits = _chunk_logits(h[s:e], w, b)  # (n_c, Vs)
            logp, g = _rows(logits, t[s:e], grad_h is not None, impl)
            out[s:e] = logp
            if grad_h is not None:
                grad_h[s:e] = (g.to(w.dtype) @ w).to(h.dtype)  # (n_c, H)
        ctx.chunk, ctx.impl, ctx.recompute = chunk, impl, recompute
        ctx.has_b = b is not None
        if recompute:
            ctx.save_for_backward(h, w, b if b is not None else torch.empty(0), t)
        else:
            ctx.save_for_backward(grad_h if grad_h is not None else torch.empty(0))
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        go = grad_out.float()  # (N,)
        if not ctx.recompute:
            (grad_h,) = ctx.saved_tensors
            return (grad_h * go.unsqueeze(1).to(grad_h.dtype)), None, None, None, None, None
        h, w, b, t = ctx.saved_tensors
        b = b if ctx.has_b else None
        gh = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        gw = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if ctx.needs_input_grad[1] else None
        gb = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if b is not None else None
        for s in range(0, h.shape[0], ctx.chunk):
            e = min(h.shape[0], s + ctx.chunk)
            _, g = _rows(_chunk_logits(h[s:e], w, b), t[s:e], True, ctx.impl)
            g = g.float() * go[s:e].unsqueeze(1)  # (n_c, Vs)
            if gh is not None:
                gh[s:e] = (g.to(w.dtype) @ w).to(h.dtype)
            if gw is not None:
                gw += g.t() @ h[s:e].float()
            if gb is not None:
                gb += g.sum(0)
        gw = gw.to(w.dtype) if gw is not None else None
        gb = gb.to(b.dtype) if gb is not None else None
        return gh, gw, gb, None, None, None


# --------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------


def _select_rows(targets: torch.Tensor, mask: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, ...]:
    """Indices of the masked positions and their targets shifted into the support ``lo:hi``."""
    if targets.shape != mask.shape:
        raise ValueError(f"targets {tuple(targets.shape)} and mask {tuple(mask.shape)} must have the same shape")
    b_idx, t_idx = mask.bool().nonzero(as_tuple=True)  # (N,), (N,)
    tgt = targets[b_idx, t_idx]  # (N,)
    if tgt.numel() and (int(tgt.min()) < lo or int(tgt.max()) >= hi):
        bad = tgt[(tgt < lo) | (tgt >= hi)][0].item()
        raise ValueError(f"target id {bad} is outside the softmax support [{lo}, {hi}); "
                         "map units with UnitLM.units_to_ids or use support='full'")
    return b_idx, t_idx, (tgt - lo).long()


def _per_sequence(tok: torch.Tensor, b_idx: torch.Tensor, n_seq: int) -> torch.Tensor:
    """``(N,)`` fp32 token log-probs -> ``(n_seq,)`` fp32 sums, accumulated in fp64: a 1,000-token sum in fp32
    (atomics in any order on a GPU) drifts by ~1e-4 nats, the tolerance itself."""
    acc = torch.zeros(n_seq, dtype=torch.float64, device=tok.device).index_add(0, b_idx, tok.double())
    return acc.float()


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, lo: int = 0,
                      hi: int | None = None, impl: str | None = None) -> torch.Tensor:
    """``(B, T, V)`` logits, ``(B, T)`` targets/mask -> ``(B,)`` fp32 sum of masked token log-probs."""
    hi = logits.shape[-1] if hi is None else hi
    b_idx, t_idx, tgt = _select_rows(targets, mask, lo, hi)
    rows = logits[b_idx, t_idx, lo:hi]  # (N, Vs)
    which = pick_impl(logits.device, impl)
    if which == "triton":
        tok = _RowLogprobs.apply(rows, tgt, which)
    else:
        tok = torch.log_softmax(rows.float(), -1).gather(1, tgt.unsqueeze(1)).squeeze(1)  # (N,)
    return _per_sequence(tok, b_idx, logits.shape[0])


def default_chunk_rows(vocab: int, budget_bytes: int = 1 << 26) -> int:
    """Rows per lm_head chunk so one fp32 chunk of logits (and its gradient) stays near ``budget_bytes``."""
    return max(16, budget_bytes // (8 * max(1, vocab)))


def fused_linear_token_logprobs(rows: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                bias: torch.Tensor | None = None, lo: int = 0, hi: int | None = None,
                                chunk_rows: int | None = None, impl: str | None = None) -> torch.Tensor:
    """``(N, H)`` hidden rows, ``(V, H)`` lm_head, ``(N,)`` target ids -> ``(N,)`` fp32 token log-probs.

    The softmax runs over ``weight[lo:hi]``; the logits are built ``chunk_rows`` rows at a time.
    """
    hi = weight.shape[0] if hi is None else hi
    if targets.numel() and (int(targets.min()) < lo or int(targets.max()) >= hi):
        bad = targets[(targets < lo) | (targets >= hi)][0].item()
        raise ValueError(f"target id {bad} is outside the softmax support [{lo}, {hi}); "
                         "map units with UnitLM.units_to_ids or use support='full'")
    w = weight[lo:hi]  # (Vs, H)
    b = bias[lo:hi] if bias is not None else None
    chunk = chunk_rows or default_chunk_rows(hi - lo)
    return _FusedLinearLogprobs.apply(rows, w, b, (targets - lo).long(), chunk, pick_impl(rows.device, impl))


def fused_linear_sequence_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   mask: torch.Tensor, bias: torch.Tensor | None = None, lo: int = 0,
                                   hi: int | None = None, chunk_rows: int | None = None,
                                   impl: str | None = None) -> torch.Tensor:
    """``(B, T, H)`` hidden states and ``(V, H)`` lm_head -> ``(B,)`` fp32 sum of masked token log-probs.

    ``hidden[b, t]`` predicts ``targets[b, t]``.  Only the masked positions are projected, ``chunk_rows``
    rows at a time over the support ``weight[lo:hi]``.
    """
    hi = weight.shape[0] if hi is None else hi
    b_idx, t_idx, _ = _select_rows(targets, mask, lo, hi)
    tok = fused_linear_token_logprobs(hidden[b_idx, t_idx], weight, targets[b_idx, t_idx], bias, lo, hi,
                                      chunk_rows, impl)  # (N,)
    return _per_sequence(tok, b_idx, hidden.shape[0])
