"""The sampling kernel: torch reference vs exact truncated distributions, Triton == reference, bad params."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from alignslm.kernels import sampling as S
from scipy import stats


def exact_truncated(logits: torch.Tensor, t: float, k: int, p: float) -> np.ndarray:
    """Independent float64 implementation of temperature -> top-k -> top-p (sort-based, like HF)."""
    x = logits.double().numpy() / t
    order = np.argsort(-x, kind="stable")
    keep = np.zeros_like(x, dtype=bool)
    keep[order[:min(k, len(x))]] = True
    e = np.where(keep, np.exp(x - x.max()), 0.0)
    probs = e / e.sum()
    ps = probs[order]
    before = np.cumsum(ps) - ps
    n = max(1, int((before < p).sum()))
    out = np.zeros_like(probs)
    out[order[:n]] = probs[order[:n]]
    return out / out.sum()


def draw(logits_row: torch.Tensor, t: float, k: int, p: float, n: int, step: int = 0) -> np.ndarray:
    """n draws of one row through the torch path (n rows with different seeds)."""
    x = logits_row.expand(n, -1)
    idx = S.sample_next(x, t, k, p, torch.arange(n) * 7919 + 13, step, impl="torch")
    return idx.numpy()


def test_uniform_deterministic_and_uniform():
    seeds = torch.arange(20000, dtype=torch.long) * 1_000_003 + (1 << 40)
    u0 = S.uniform(seeds, 0)
    assert torch.equal(u0, S.uniform(seeds, 0))
    assert (u0 >= 0).all() and (u0 < 1).all()
    assert stats.kstest(u0.numpy(), "uniform").pvalue > 1e-3
    u1 = S.uniform(seeds, 1)
    assert (u0 != u1).float().mean() > 0.99  # the step changes the draw
    assert abs(np.corrcoef(u0.numpy(), u1.numpy())[0, 1]) < 0.05
    # the high half of the seed matters
    assert not torch.equal(S.uniform(torch.tensor([5]), 0), S.uniform(torch.tensor([5 + (1 << 33)]), 0))


@pytest.mark.parametrize("V,t,k,p", [(101, 0.8, 25, 1.0), (101, 1.0, 500, 0.9), (64, 1.3, 10, 0.7),
                                     (7, 0.5, 7, 1.0), (513, 1.0, 1000, 1.0)])
def test_chi_square_against_exact_truncation(V, t, k, p):
    g = torch.Generator().manual_seed(V + k)
    logits = torch.randn(V, generator=g) * 2
    probs = exact_truncated(logits, t, k, p)
    n = 20000
    counts = np.bincount(draw(logits, t, k, p, n), minlength=V)
    assert counts[probs == 0].sum() == 0, "sampled a token outside the truncated support"
    # pool rare bins so that every expected count is >= 5
    exp = probs * n
    keep = exp >= 5
    obs_c = np.append(counts[keep], counts[~keep & (probs > 0)].sum())
    exp_c = np.append(exp[keep], exp[~keep & (probs > 0)].sum())
    if exp_c[-1] < 5:
        obs_c, exp_c = obs_c[:-1], exp_c[:-1]
        exp_c = exp_c * obs_c.sum() / exp_c.sum()
    assert stats.chisquare(obs_c, exp_c).pvalue > 1e-4


def test_top_k_one_is_argmax_and_tiny_p_is_argmax():
    x = torch.randn(50, 33)
    assert torch.equal(S.sample_next(x, 1.0, 1, 1.0, torch.arange(50), 3, impl="torch"), x.argmax(-1))
    assert torch.equal(S.sample_next(x, 1.0, 33, 1e-6, torch.arange(50), 3, impl="torch"), x.argmax(-1))


def _kept_mass_full_sort(logits, temperature, top_k, top_p):
    """The torch reference's rule with a full sort (what _kept_mass did before it sorted only the top max(k))."""
    x = logits.float() / temperature.float().unsqueeze(-1)
    V = x.shape[-1]
    xs, _ = torch.sort(x, dim=-1, descending=True)
    kth = xs.gather(-1, (top_k.long().clamp(1, V) - 1).unsqueeze(-1))
    e = torch.where(x >= kth, torch.exp(x - xs[:, :1]), torch.zeros_like(x))
    es = torch.where(xs >= kth, torch.exp(xs - xs[:, :1]), torch.zeros_like(xs))
    before = torch.cumsum(es, -1) - es
    n_keep = (before < top_p.float().unsqueeze(-1) * e.sum(-1, keepdim=True)).sum(-1, keepdim=True).clamp(min=1)
    thresh = es.gather(-1, n_keep - 1)
    return torch.where(e >= thresh, e, torch.zeros_like(e))


def test_top_k_partial_sort_equals_full_sort():
    """Sorting only the max(top_k) largest values gives bitwise the full sort's kept mass: ties at the k-th
    value (kept, also past position k), per-row k and p, -inf entries, k >= V."""
    g = torch.Generator().manual_seed(3)
    B, V = 64, 37
    x = (torch.randn(B, V, generator=g) * 2).round(decimals=1)  # many exact ties
    x[::5, :4] = float("-inf")
    x[1] = 0.5  # a constant row
    t = torch.rand(B, generator=g) + 0.3
    p = torch.rand(B, generator=g).clamp(min=0.05)
    p[::3] = 1.0
    for k in (torch.randint(1, 12, (B,), generator=g), torch.full((B,), 5), torch.full((B,), V + 3)):
        assert torch.equal(S._kept_mass(x, t, k, p), _kept_mass_full_sort(x, t, k, p))


def test_per_row_params_and_reproducible():
    torch.manual_seed(0)
    x = torch.randn(6, 40)
    t = torch.tensor([0.5, 1.0, 2.0, 0.7, 1.0, 1.0])
    k = torch.tensor([1, 40, 5, 100, 3, 2])
    p = torch.tensor([1.0, 0.5, 1.0, 0.3, 1.0, 1.0])
    a = S.sample_next(x, t, k, p, torch.arange(6), 9, impl="torch")
    b = S.sample_next(x, t, k, p, torch.arange(6), 9, impl="torch")
    assert torch.equal(a, b)
    assert a[0] == x[0].argmax()
    assert a[4] in x[4].topk(3).indices and a[5] in x[5].topk(2).indices
    # a row's sample does not depend on its batch neighbours
    c = S.sample_next(x[2:3], t[2:3], k[2:3], p[2:3], torch.tensor([2]), 9, impl="torch")
    assert c.item() == a[2].item()


@pytest.mark.parametrize("kw,match", [
    ({"temperature": 0.0}, "temperature"), ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"), ({"top_k": 0}, "top_k"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": torch.tensor([3, 0])}, "top_k"),
])
def test_bad_params(kw, match):
    args = {"temperature": 1.0, "top_k": 5, "top_p": 1.0, **kw}
    with pytest.raises(S.SamplingError, match=match):
        S.sample_next(torch.randn(2, 10), args["temperature"], args["top_k"], args["top_p"], torch.arange(2), 0)


INTERP_SCRIPT = r"""
import json, sys, torch
from alignslm.kernels import sampling as S
out = {}
for B, V in [(16, 128), (13, 101), (5, 7), (3, 600)]:
    g = torch.Generator().manual_seed(B * V)
    x = torch.randn(B, V, generator=g) * 3
    t = torch.rand(B, generator=g) + 0.3
    k = torch.randint(1, 2 * V, (B,), generator=g)
    p = torch.rand(B, generator=g) * 0.95 + 0.05
    k[0], p[0] = V + 5, 1.0  # both filters off
    p[1] = 1.0
    u = torch.rand(B, generator=g)
    seed = torch.randint(0, 1 << 62, (B,), generator=g)
    steps = torch.arange(B) * 3
    res = []
    for kw in ({"step": 0, "u": u}, {"step": 17}, {"step": steps}):
        a = S.sample_torch(x, t, k, p, seed, **kw)
        b = S.sample_triton(x, t, k, p, seed, **kw)
        res.append([a.tolist(), b.tolist()])
    out[f"{B}x{V}"] = res
out["impl"] = S.pick_impl("cpu")
print("RESULT" + json.dumps(out))
"""


def test_triton_equals_reference_interpreter():
    """Triton's CPU interpreter must be switched on before triton is first imported: a subprocess."""
    pytest.importorskip("triton")
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "TRITON_INTERPRET": "1", "ALIGNSLM_IMPL": "triton"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", INTERP_SCRIPT], env=env, cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out.pop("impl") == "triton"
    assert len(out) == 4
    for shape, res in out.items():
        for i, (ref, got) in enumerate(res):
            assert ref == got, f"{shape} case {i}: torch {ref} != triton {got}"


def test_pick_impl_env(monkeypatch):
    from alignslm.impl import ImplError, forced

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("ALIGNSLM_IMPL", "torch")
    assert S.pick_impl("cpu") == "torch"
    monkeypatch.delenv("ALIGNSLM_IMPL")
    assert S.pick_impl("cpu") == "torch"  # the default on CPU is the reference
    monkeypatch.setenv("ALIGNSLM_IMPL", "numpy")  # another op's implementation: sampling keeps its choice
    assert S.pick_impl("cpu") == "torch"
    monkeypatch.setenv("ALIGNSLM_IMPL", "triton")
    with pytest.raises(ImplError, match="TRITON_INTERPRET"):
        S.pick_impl("cpu")
    monkeypatch.delenv("ALIGNSLM_IMPL")
    with forced("sample", "triton"), pytest.raises(ImplError, match="test override"):
        S.pick_impl("cpu")
    assert S.pick_impl("cpu") == "torch"  # the override ends with its block


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("B,V", [(1024, 501), (37, 4099), (8, 7)])
def test_gpu_triton_equals_reference(B, V):
    pytest.importorskip("triton")
    g = torch.Generator(device="cuda").manual_seed(B + V)
    x = torch.randn(B, V, device="cuda", generator=g) * 3
    t = torch.rand(B, device="cuda", generator=g) + 0.3
    k = torch.randint(1, 2 * V, (B,), device="cuda", generator=g)
    p = torch.rand(B, device="cuda", generator=g) * 0.95 + 0.05
    p[: B // 4] = 1.0
    seed = torch.randint(0, 1 << 62, (B,), device="cuda", generator=g)
    u = torch.rand(B, device="cuda", generator=g)
    a = S.sample_triton(x, t, k, p, seed, 0, u=u)
    b = S.sample_torch(x, t, k, p, seed, 0, u=u)
    # GPU exp/sum orders differ from torch's by an ulp: allow a rare boundary flip
    assert (a == b).float().mean() >= 0.998
    q = S.truncated_probs(x, t, k, p)
    assert (q.gather(-1, a.unsqueeze(-1)) > 0).float().mean() >= 0.998
    step = torch.tensor(5, device="cuda")
    assert (S.sample_triton(x, t, k, p, seed, step) == S.sample_torch(x, t, k, p, seed, 5)).float().mean() >= 0.998
    assert S.pick_impl("cuda") == "triton" or os.environ.get("ALIGNSLM_IMPL") == "torch"
