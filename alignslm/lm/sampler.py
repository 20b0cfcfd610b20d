"""The decode loop: N sampled continuations per prompt, prompts of different lengths in one batch.

    conts = generate(lm, prompts=[[3, 17, 42], [5]], n=5, params=SamplingParams(max_new=150), seeds=seeds)
    conts[i][j]  -> the j-th continuation (a unit list, EOS stripped) of prompt i

How (one batch of P prompts):
1. Prefill once per prompt: ``[BOS, units]`` left-padded to the longest prompt (Lp), explicit
   position ids and a 4-D mask, into a dynamic cache.                              # (P, Lp)
2. Expand: every layer's keys/values are repeated N times into a preallocated ``StaticCache`` of
   length Lp + max_new, so the N continuations share the prompt's prefill.          # (P*N, H, L, D)
   On CPU (LLaMA/OPT) the prompt's keys/values stay once per prompt instead, and a decode step reads them
   once for all N continuations (a shared-prompt attention; see :func:`_expand_cache`).
3. Decode: one token per step for all P*N rows (per-row positions, a static additive mask that opens one
   column per step), logits restricted to the LM's softmax support, then :func:`sample_next` (the Triton
   kernel on GPU, the torch reference on CPU).  A row stops at EOS (or, with the full-vocabulary
   support, at any non-unit token); the loop stops when all rows have stopped or at ``max_new``.
   On CUDA the model step is captured once in a CUDA graph and replayed (static buffers).

Every continuation has its own seed; the draw at step t depends only on (seed, t, logits), so batching,
sharding and resuming do not change the result.  Parameters are checked before any model call.

transformers internals: the caches and the CPU attention build on transformers' cache layers
(``StaticLayer.lazy_initialization``, ``cumulative_length``, ``Cache(layers=...)``) and set
``config._attn_implementation``; each access goes through :func:`internal`, which raises
:class:`TransformersAPIError` naming the installed version when one moves, and
:func:`transformers_internals_problems` lists what is missing (tests/test_decode.py runs it, so an upgrade that
moves one fails there first).  The floor in pyproject.toml is the oldest release the CI job in .ci/run proves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import StaticLayer

from alignslm import logger
from alignslm.kernels.sampling import SamplingError, check_params, sample_next
from alignslm.lm.unitlm import UnitLM


class TransformersAPIError(RuntimeError):
    """A transformers internal the decode loop uses is gone or changed; the message names it and the version."""


def internal(obj: object, name: str) -> Any:
    """``obj.name`` for a transformers attribute that is not public API, or :class:`TransformersAPIError`."""
    try:
        return getattr(obj, name)
    except AttributeError:
        import transformers

        owner = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        raise TransformersAPIError(
            f"transformers {transformers.__version__}: {owner}.{name} is gone, and alignslm.lm.sampler's decode "
            "loop relies on it; install the transformers release pyproject.toml and .ci/run test (or update "
            "the sampler)") from None


def init_layer(layer: StaticLayer, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Allocate a StaticLayer's buffers for (B, H, L, D) keys/values (``lazy_initialization``: its signature
    changed in transformers 5.0; the cache's ``cumulative_length`` came in 5.4)."""
    try:
        internal(layer, "lazy_initialization")(keys, values)
    except TypeError as e:
        import transformers

        raise TransformersAPIError(f"transformers {transformers.__version__}: StaticLayer.lazy_initialization"
                                   f"(keys, values) failed ({e}); the decode loop needs transformers >= 5.4") from e


def transformers_internals_problems() -> list[str]:
    """Every transformers internal the decode loop touches, probed on tiny tensors; [] when all are in place."""
    import transformers
    from transformers.cache_utils import Cache

    problems = []
    k = torch.zeros(1, 1, 2, 4)
    try:
        layer = StaticLayer(max_cache_len=4)
        init_layer(layer, k, k)
        for name in ("keys", "values", "cumulative_length"):
            internal(layer, name)
        Cache(layers=[layer])
        internal(transformers.PretrainedConfig(), "_attn_implementation")
        from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: F401
    except TransformersAPIError as e:
        problems.append(str(e))
    except (TypeError, ImportError) as e:  # a signature or a module path changed
        problems.append(f"transformers {transformers.__version__}: {e}")
    return problems


@dataclass(frozen=True)
class DecodeStats:
    """Facts about one decoded batch (for logs and tests): rows (P*N), the padded prompt length, the decode
    steps taken, and whether the step ran as a captured CUDA graph."""

    rows: int
    prompt_len: int
    steps: int
    cuda_graph: bool


@dataclass(frozen=True)
class SamplingParams:
    """How to sample.  ``greedy`` ignores temperature/top-k/top-p and takes the argmax over the support."""

    temperature: float = 0.8
    top_k: int = 25
    top_p: float = 1.0
    max_new: int = 150
    greedy: bool = False
    min_new: int = 0  # EOS is impossible before this many new units (like generate's min_new_tokens)


def validate(lm: UnitLM, prompts: Sequence[Sequence[int]], params: SamplingParams, n: int,
             seeds: Sequence[int] | None) -> list[list[int]]:
    """All checks that can fail, before generation starts.  Returns the prompts as token ids."""
    if not params.greedy:
        check_params(params.temperature, params.top_k, params.top_p)
    if params.max_new < 1:
        raise SamplingError(f"max_new must be >= 1, got {params.max_new} (sample.max_new_units)")
    if not 0 <= params.min_new <= params.max_new:
        raise SamplingError(f"min_new must be in [0, max_new={params.max_new}], got {params.min_new}")
    if n < 1:
        raise SamplingError(f"n (continuations per prompt) must be >= 1, got {n} (sample.n_continuations)")
    if seeds is not None and len(seeds) != len(prompts) * n:
        raise SamplingError(f"need one seed per continuation: {len(prompts)} prompts x {n} = "
                            f"{len(prompts) * n}, got {len(seeds)}")
    return lm.encode_checked(prompts, what="prompt", bos=lm.bos_id is not None, min_tokens=1,
                             purpose="to generate from", reserve=params.max_new, length_error=SamplingError,
                             hint="shorten sample.prompt_seconds or sample.max_new_units")


@torch.no_grad()
def generate(lm: UnitLM, prompts: Sequence[Sequence[int]], *, n: int = 1, params: SamplingParams = SamplingParams(),
             seeds: Sequence[int] | None = None, batch_size: int = 32,
             stats: list[DecodeStats] | None = None) -> list[list[list[int]]]:
    """``n`` continuations (unit lists) for every prompt; ``seeds`` has one int per continuation
    (prompt-major: prompt i, continuation j -> ``seeds[i * n + j]``); None -> ``i * n + j``.  ``stats``: a
    list that gets one :class:`DecodeStats` per decoded batch."""
    ids = validate(lm, prompts, params, n, seeds)
    if seeds is None:
        seeds = list(range(len(prompts) * n))
    out: list[list[list[int]]] = []
    was_training = lm.model.training
    lm.model.eval()
    try:
        for s in range(0, len(ids), batch_size):
            chunk = ids[s:s + batch_size]
            out.extend(_generate_batch(lm, chunk, n, params, list(seeds[s * n:(s + len(chunk)) * n]), stats))
    finally:
        lm.model.train(was_training)
    return out


def _generate_batch(lm: UnitLM, prompts: list[list[int]], n: int, params: SamplingParams,
                    seeds: list[int], stats: list[DecodeStats] | None = None) -> list[list[list[int]]]:
    model, dev = lm.model, lm.device
    P, Lp = len(prompts), max(len(p) for p in prompts)
    L = Lp + params.max_new
    dtype = next(model.parameters()).dtype
    neg = torch.finfo(dtype).min
    pad = torch.tensor([Lp - len(p) for p in prompts], device=dev)  # (P,)
    tokens = torch.full((P, Lp), lm.pad_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        tokens[b, Lp - len(p):] = torch.tensor(p)
    tokens = tokens.to(dev)  # (P, Lp) left-padded
    ar = torch.arange(Lp, device=dev)
    pos = (ar.unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0)  # (P, Lp)
    allowed = (ar.view(1, 1, Lp) <= ar.view(1, Lp, 1)) & (ar.view(1, 1, Lp) >= pad.view(P, 1, 1))
    mask = torch.zeros((P, 1, Lp, Lp), dtype=dtype, device=dev).masked_fill_(~allowed.unsqueeze(1), neg)
    cache = _new_dynamic_cache(model)
    logits = model(input_ids=tokens, attention_mask=mask, position_ids=pos, **{_cache_kw(model): cache}, use_cache=True,
                   logits_to_keep=1).logits[:, -1]  # (P, V)
    # share the prefill: repeat every row n times into a static cache  (P*N, H, L, D)
    B = P * n
    static = _expand_cache(model, cache, n, L)
    logits = logits.repeat_interleave(n, 0)  # (B, V)
    pad_b = pad.repeat_interleave(n)  # (B,)
    step_mask = torch.full((B, 1, 1, L), neg, dtype=dtype, device=dev)
    cols = torch.arange(L, device=dev)
    step_mask.masked_fill_(((cols >= pad_b.unsqueeze(1)) & (cols < Lp)).view(B, 1, 1, L), 0.0)
    pos_b = (Lp - pad_b).view(B, 1)  # next position per row (B, 1)
    seed_t = torch.tensor(seeds, dtype=torch.long, device=dev)
    sup = lm.support_ids.to(dev)  # (S,)
    is_stop = _stop_table(lm, dev)  # (V,) bool
    eos_col = (sup == lm.eos_id).nonzero().flatten() if lm.eos_id is not None else sup[:0]  # (0|1,)
    out = torch.full((B, params.max_new), -1, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    rows = (torch.full((B,), params.temperature, dtype=torch.float32, device=dev),  # per-row sampling params,
            torch.full((B,), params.top_k, dtype=torch.long, device=dev),  # built once, not per step
            torch.full((B,), params.top_p, dtype=torch.float32, device=dev), seed_t)
    stepper = _Stepper(model, static, step_mask, B, dev)
    with _SharedAttention(model, on=isinstance(static.layers[0], _SharedLayer)):  # the cache built above
        for t in range(params.max_new):
            x = logits[:, sup]  # (B, S)
            if t < params.min_new:
                x[:, eos_col] = float("-inf")
            tok = _pick(x, params, rows, t)  # (B,) index into the support
            tok = sup[tok]  # (B,) token id
            stop = is_stop[tok]
            out[:, t] = torch.where(done | stop, torch.full_like(tok, -1), tok)
            done |= stop
            if t + 1 == params.max_new or ((dev.type != "cuda" or t % 16 == 15) and bool(done.all())):
                break
            step_mask[:, :, :, Lp + t] = 0.0  # open this token's own key column
            logits = stepper(tok.view(B, 1), pos_b + t)  # (B, V)
    if stats is not None:
        stats.append(DecodeStats(rows=B, prompt_len=Lp, steps=t + 1, cuda_graph=stepper.graph is not None))
    return _to_units(lm, out.cpu(), P, n)


def _pick(logits: torch.Tensor, params: SamplingParams, rows: tuple, t: int) -> torch.Tensor:
    """(B, S) -> (B,) index into the support.  ``rows``: (temperature, top_k, top_p, seed), each (B,)."""
    if params.greedy:
        return logits.argmax(-1)
    return sample_next(logits, *rows, t, validate=False)


def _stop_table(lm: UnitLM, dev: torch.device) -> torch.Tensor:
    """(V,) True for tokens that end a continuation: EOS and every non-unit token."""
    stop = torch.ones(lm.vocab_size, dtype=torch.bool, device=dev)
    stop[lm.offset:lm.offset + lm.n_units] = False
    return stop


def _to_units(lm: UnitLM, out: torch.Tensor, P: int, n: int) -> list[list[list[int]]]:
    res: list[list[list[int]]] = []
    for i in range(P):
        row = []
        for j in range(n):
            ids = out[i * n + j]
            ids = ids[ids >= 0]
            row.append((ids - lm.offset).tolist())
        res.append(row)
    return res


def _cache_kw(model: torch.nn.Module) -> str:
    """The forward argument that takes a KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``.

    Passing the wrong name is silently swallowed by ``**kwargs`` and the model builds its own cache, so the
    name is read off the signature instead of guessed.
    """
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_dynamic_cache(model: torch.nn.Module) -> object:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _expand_cache(model: torch.nn.Module, cache: object, n: int, max_len: int) -> object:
    """A preallocated cache holding every row of ``cache`` repeated ``n`` times (p0 x n, p1 x n, ...).

    CUDA: transformers' ``StaticCache`` (full-length buffers, fixed addresses: CUDA-graph capturable).
    CPU, LLaMA/OPT: the prompt's keys/values are kept once per prompt, not ``n`` times, and only the
    generated tokens get per-row buffers (:class:`_SharedLayer`, attended by :func:`_shared_attention`):
    the decode step reads the prompt's cache once for its ``n`` continuations.
    CPU, other models: full-length buffers of which attention reads only the filled prefix (:class:`_PrefixLayer`).
    """
    from transformers import StaticCache
    from transformers.cache_utils import Cache

    dev = cache.layers[0].keys.device
    if dev.type != "cuda" and _shared_prefix_ok(model):
        return Cache(layers=[_SharedLayer(dyn.keys, dyn.values, n, max_len) for dyn in cache.layers])
    if dev.type == "cuda":
        static = StaticCache(config=model.config, max_cache_len=max_len)
    else:
        static = Cache(layers=[_PrefixLayer(max_cache_len=max_len) for _ in cache.layers])
    if len(static.layers) != len(cache.layers):
        raise RuntimeError(f"{type(model).__name__}: cache layout not supported by the decode loop "
                           f"({len(cache.layers)} dynamic vs {len(static.layers)} static layers)")
    for dyn, st in zip(cache.layers, static.layers):
        k = dyn.keys.repeat_interleave(n, 0)  # (P*N, H, Lp, D)
        v = dyn.values.repeat_interleave(n, 0)
        init_layer(st, k, v)
        Lp = k.shape[2]
        st.keys[:, :, :Lp].copy_(k)
        st.values[:, :, :Lp].copy_(v)
        internal(st, "cumulative_length").fill_(Lp)
        st.filled = Lp
    return static


class _PrefixLayer(StaticLayer):
    """A StaticLayer whose update returns only the filled prefix of its buffers (CPU decode)."""

    filled = 0

    def update(self, key_states, value_states, *args, **kwargs):  # (B, H, 1, D)
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        self.filled += key_states.shape[-2]
        return keys[:, :, :self.filled], values[:, :, :self.filled]  # (B, H, filled, D)


SHARED_ATTN = "alignslm_shared_prefix"  # the attention implementation name registered for the CPU decode steps
_SHARED_MODEL_TYPES = ("llama", "opt")  # attention = softmax(q k^T * scaling + mask) v, nothing else


def _shared_prefix_ok(model: torch.nn.Module) -> bool:
    """The CPU shared-prefix decode applies: a model whose attention goes through transformers'
    attention interface with plain scaled-dot-product semantics (no softcap, sliding window, sinks)."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "model_type", None) in _SHARED_MODEL_TYPES and not getattr(cfg, "sliding_window", None)


class _SharedLayer(StaticLayer):
    """Prompt part (P, Hkv, Lp, D), shared by the ``n`` rows of its prompt; generated part
    (P*n, Hkv, cap, D), grown ``GROW`` steps at a time.  ``update`` appends one token per row and
    returns the whole generated buffer (contiguous: a strided prefix view makes the CPU matmuls
    copy it, 3x slower), tagged so that :func:`_shared_attention` finds the prompt part; the unfilled
    slots hold zeros and are masked."""

    GROW = 32

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, n: int, max_len: int):
        super().__init__(max_cache_len=max_len)
        P, H, Lp, D = keys.shape
        self.n, self.prompt_len, self.max_new = n, Lp, max_len - Lp
        self.pk, self.pv = keys.contiguous(), values.contiguous()  # (P, Hkv, Lp, D)
        self.device, self.batch_size, self.num_heads = keys.device, P * n, H
        self.k_head_dim, self.v_head_dim = D, values.shape[-1]
        # two flat buffers per tensor, used in turn as the capacity grows: each growth copies into the
        # other one, so fresh pages are touched once (page faults cost more than the copies here)
        self._flat = {"keys": [keys.new_empty(P * n * H * self.max_new * D) for _ in range(2)],
                      "values": [values.new_empty(P * n * H * self.max_new * self.v_head_dim)
                                 for _ in range(2)]}
        self._turn = 0
        self.keys = self._flat["keys"][0][:0].view(P * n, H, 0, D)
        self.values = self._flat["values"][0][:0].view(P * n, H, 0, self.v_head_dim)
        self.cumulative_length = torch.tensor(Lp, dtype=torch.long, device=keys.device)
        self.t = 0
        self.is_initialized = True

    def _grow(self) -> None:
        have = self.keys.shape[2]
        cap = min(have + self.GROW, self.max_new)
        self._turn ^= 1
        for name in ("keys", "values"):
            old = getattr(self, name)
            B, H, _, D = old.shape
            new = self._flat[name][self._turn][:B * H * cap * D].view(B, H, cap, D)
            new[:, :, :have].copy_(old)
            new[:, :, have:].zero_()  # finite (masked) values in the unfilled slots
            setattr(self, name, new)

    def update(self, key_states, value_states, *args, **kwargs):  # (B, Hkv, 1, D)
        if key_states.shape[-2] != 1:
            raise RuntimeError("the shared-prefix decode cache takes one token per step")
        t = self.t
        if t == self.keys.shape[2]:
            self._grow()
        self.keys[:, :, t].copy_(key_states[:, :, 0])
        self.values[:, :, t].copy_(value_states[:, :, 0])
        self.t = t + 1
        self.cumulative_length.add_(1)
        keys = self.keys.view(self.keys.shape)  # a fresh view to carry the tag  (B, Hkv, cap, D)
        keys._alignslm_shared = self
        return keys, self.values


def _shared_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention for a :class:`_SharedLayer`: one query token per row against [prompt part | generated part].

    query (B, H, 1, D); key/value: the generated part's buffers (B, Hkv, cap, D); attention_mask: the decode
    loop's additive (B, 1, 1, >= Lp + cap) mask, open on the prompt and the tokens so far.  The prompt part
    is read once per prompt (a (n*G x D) @ (D x Lp) product per prompt and kv head) instead of once per row.
    Anything else (the prefill: an untagged key) goes to SDPA.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layer = getattr(key, "_alignslm_shared", None)
    if layer is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[2] != 1 or kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
        raise RuntimeError(f"{type(module).__name__}: attention not supported by the shared-prompt decode cache "
                           f"(one query token, no softcap or sliding window)")
    B, H, _, D = query.shape
    P, Hkv, Lp, _ = layer.pk.shape
    n, G, t = layer.n, H // Hkv, key.shape[2]
    scale = D ** -0.5 if scaling is None else scaling
    q = query.view(P, n, Hkv, G, D)
    qp = q.permute(0, 2, 1, 3, 4).reshape(P, Hkv, n * G, D)  # the prompt's n rows together
    sp = torch.matmul(qp, layer.pk.transpose(-1, -2))  # (P, Hkv, n*G, Lp)
    sp = sp.view(P, Hkv, n, G, Lp).transpose(1, 2).reshape(B, Hkv, G, Lp)
    sg = torch.matmul(query.view(B, Hkv, G, D), key.transpose(-1, -2))  # (B, Hkv, G, t)
    s = torch.cat([sp, sg], dim=-1).mul_(scale)  # (B, Hkv, G, Lp + t)
    s = s.view(B, H, 1, Lp + t).add_(attention_mask[..., :Lp + t]).view(B, Hkv, G, Lp + t)
    w = torch.softmax(s, dim=-1, dtype=torch.float32).to(query.dtype)
    wp = w[..., :Lp].reshape(P, n, Hkv, G, Lp).transpose(1, 2).reshape(P, Hkv, n * G, Lp)
    op = torch.matmul(wp, layer.pv).view(P, Hkv, n, G, -1).transpose(1, 2).reshape(B, Hkv, G, -1)
    out = op.add_(torch.matmul(w[..., Lp:], value))  # (B, Hkv, G, Dv)
    return out.reshape(B, 1, H, -1), None  # (B, 1, H, Dv): one query token, so (B, H, 1, Dv) transposed


class _SharedAttention:
    """Context: the model's attention implementation is :func:`_shared_attention` (registered once)."""

    def __init__(self, model: torch.nn.Module, on: bool):
        self.cfg, self.on = model.config, on

    def __enter__(self):
        if self.on:
            from transformers import AttentionInterface

            AttentionInterface.register(SHARED_ATTN, _shared_attention)  # public API; registering again is a no-op
            self.before = internal(self.cfg, "_attn_implementation")
            self.cfg._attn_implementation = SHARED_ATTN
        return self

    def __exit__(self, *exc):
        if self.on:
            self.cfg._attn_implementation = self.before


class _Stepper:
    """One decode step of the model: eager on CPU, a captured CUDA graph (static buffers) on CUDA."""

    def __init__(self, model: torch.nn.Module, cache: object, mask: torch.Tensor, B: int, dev: torch.device):
        self.model, self.cache, self.mask = model, cache, mask
        self.graph = None
        self.tok = torch.zeros((B, 1), dtype=torch.long, device=dev)
        self.pos = torch.zeros((B, 1), dtype=torch.long, device=dev)
        self.use_graph = dev.type == "cuda"
        # CPU: attention over the filled prefix only (_PrefixLayer) or the whole mask (_SharedLayer slices it)
        self.prefix = dev.type != "cuda" and hasattr(cache.layers[0], "filled")
        self.calls = 0
        self.cache_kw = _cache_kw(model)  # read off the signature once, not per step

    def _forward(self) -> torch.Tensor:
        mask = self.mask
        if self.prefix:  # CPU: attention over the filled prefix only (see _PrefixLayer)
            mask = mask[..., :self.cache.layers[0].filled + 1]  # (B, 1, 1, filled+1)
        return self.model(input_ids=self.tok, attention_mask=mask, position_ids=self.pos,
                          **{self.cache_kw: self.cache},
                          use_cache=True).logits[:, -1]  # (B, V)

    def __call__(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.tok.copy_(tok)
        self.pos.copy_(pos)
        self.calls += 1
        if not self.use_graph:
            return self._forward()
        if self.graph is None and self.calls >= 2:  # step 1 eagerly (warm-up), then capture
            self._capture()
        if self.graph is None:
            return self._forward()
        self.graph.replay()
        return self.logits

    def _capture(self) -> None:
        """Capture the next step; the cache's write index advances inside the graph, so replays continue."""
        try:
            st = internal(self.cache.layers[0], "cumulative_length")
            before = st.clone()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self.logits = self._forward()
            for layer in self.cache.layers:  # capture does not execute: the index is unchanged
                layer.cumulative_length.copy_(before)
            self.graph = g
        except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager steps
            logger.warning("CUDA graph capture of the decode step failed (%s); decoding eagerly", e)
            self.use_graph = False
