"""The decode loop against transformers' generate: greedy identical, sampled distributions equal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from alignslm.kernels.sampling import SamplingError
from helpers import tiny_llama
from scipy import stats
from transformers import LogitsProcessor, LogitsProcessorList, OPTConfig, OPTForCausalLM

from alignslm.lm.sampler import SamplingParams, generate
from alignslm.lm.unitlm import UnitLM, UnitLMError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

N_UNITS = 20


def _llama(seed: int = 0):
    m = tiny_llama(3 + N_UNITS, seed=seed, hidden=48, intermediate=96, heads=4, kv_heads=2, max_positions=96,
                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.no_grad():  # sharper logits so greedy paths are not near-ties, and EOS is reachable
        m.lm_head.weight.mul_(8.0)
    return m


def _opt(seed: int = 0) -> OPTForCausalLM:
    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=4 + N_UNITS + 2, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                    num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=96,
                    bos_token_id=0, eos_token_id=2, pad_token_id=1)
    m = OPTForCausalLM(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(8.0)
    return m


class _Support(LogitsProcessor):
    """Restrict generate's softmax to the UnitLM support (what the sampler does)."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def __call__(self, input_ids, scores):
        return scores.masked_fill(~self.mask, float("-inf"))


PROMPTS = [[3, 7, 7, 1, 12], [5], [0, 19, 4, 4, 8, 9, 2, 11, 6]]


def _hf_generate(lm: UnitLM, prompts, n: int, **kw) -> list[list[list[int]]]:
    ids = [[lm.bos_id, *lm.units_to_ids(p)] for p in prompts]
    Lp = max(map(len, ids))
    dev = lm.device
    inp = torch.tensor([[lm.pad_id] * (Lp - len(s)) + s for s in ids], device=dev)
    att = torch.tensor([[0] * (Lp - len(s)) + [1] * len(s) for s in ids], device=dev)
    support = LogitsProcessorList([_Support(lm.support_mask(dev))])
    out = lm.model.generate(input_ids=inp, attention_mask=att, num_return_sequences=n, eos_token_id=lm.eos_id,
                            pad_token_id=lm.pad_id, logits_processor=support, **kw)[:, Lp:].cpu()
    res = []
    for i in range(len(prompts)):
        row = []
        for j in range(n):
            seq = out[i * n + j].tolist()
            cut = seq[:seq.index(lm.eos_id)] if lm.eos_id in seq else seq
            row.append([t - lm.offset for t in cut])
        res.append(row)
    return res


@pytest.mark.parametrize("make,offset", [(_llama, 3), (_opt, 4)])
def test_greedy_identical_to_generate(make, offset):
    model = make()
    lm = UnitLM(model, offset=offset, n_units=N_UNITS, bos_id=model.config.bos_token_id,
                eos_id=model.config.eos_token_id, pad_id=model.config.pad_token_id)
    first = generate(lm, PROMPTS, n=1, params=SamplingParams(greedy=True, max_new=30))
    common = np.bincount([u for c in first for u in c[0]]).argmax()
    with torch.no_grad():  # make EOS beat the most common greedy unit, so some rows stop early
        model.lm_head.weight[lm.eos_id] = model.lm_head.weight[common + offset] * 1.05
    ours = generate(lm, PROMPTS, n=2, params=SamplingParams(greedy=True, max_new=30))
    ref = _hf_generate(lm, PROMPTS, 1, do_sample=False, max_new_tokens=30)
    assert ours == [[r[0], r[0]] for r in ref]  # both copies of a prompt share its greedy path
    assert any(len(c[0]) < 30 for c in ours), "expected at least one EOS stop in the test setup"
    # batching does not change results: each prompt alone
    for i, p in enumerate(PROMPTS):
        assert generate(lm, [p], n=1, params=SamplingParams(greedy=True, max_new=30))[0][0] == ours[i][0]


def test_sampled_distribution_matches_generate():
    model = _llama(1)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.15)  # flatter distributions: many tokens in play
    lm = UnitLM(model, offset=3, n_units=N_UNITS, bos_id=1, eos_id=2, pad_id=0)
    n, kw = 3000, {"temperature": 0.9, "top_k": 12, "top_p": 0.9}
    ours = generate(lm, [PROMPTS[0]], n=n, params=SamplingParams(max_new=2, **kw),
                    seeds=list(range(1000, 1000 + n)))[0]
    torch.manual_seed(0)
    ref = _hf_generate(lm, [PROMPTS[0]], n, do_sample=True, max_new_tokens=2, **kw)[0]
    for pos in (0, 1):  # first token; second token's marginal
        a = np.bincount([c[pos] if len(c) > pos else N_UNITS for c in ours], minlength=N_UNITS + 1)
        b = np.bincount([c[pos] if len(c) > pos else N_UNITS for c in ref], minlength=N_UNITS + 1)
        used = (a + b) > 0
        assert used.sum() >= 4
        assert stats.chi2_contingency(np.stack([a[used], b[used]])).pvalue > 1e-3
    # the first token also matches the exactly truncated distribution of the model
    ids = torch.tensor([[1, *lm.units_to_ids(PROMPTS[0])]])
    with torch.no_grad():
        x = model(ids).logits[0, -1, lm.support_ids] / kw["temperature"]
    p = torch.softmax(x.double(), -1)
    p[p < p.topk(kw["top_k"]).values[-1]] = 0
    ps, order = p.sort(descending=True)
    ps = ps / ps.sum()
    cut = int(((ps.cumsum(0) - ps) < kw["top_p"]).sum())
    exact = torch.zeros_like(p)
    exact[order[:cut]] = ps[:cut]
    exact = (exact / exact.sum()).numpy()
    first = np.bincount([c[0] if c else N_UNITS for c in ours], minlength=N_UNITS + 1)[:N_UNITS]
    assert first[exact[:N_UNITS] == 0].sum() == 0
    keep = exact[:N_UNITS] * n >= 5
    e = exact[:N_UNITS][keep] * n
    assert stats.chisquare(first[keep], e * first[keep].sum() / e.sum()).pvalue > 1e-3


def test_reproducible_and_batch_independent():
    lm = UnitLM(_llama(2), offset=3, n_units=N_UNITS, bos_id=1, eos_id=2, pad_id=0)
    params = SamplingParams(max_new=15, temperature=1.0, top_k=10)
    a = generate(lm, PROMPTS, n=3, params=params, seeds=list(range(9)))
    b = generate(lm, PROMPTS, n=3, params=params, seeds=list(range(9)))
    assert a == b
    assert len({tuple(c) for c in a[0]}) > 1, "different seeds should give different continuations"
    c = generate(lm, PROMPTS[1:2], n=3, params=params, seeds=[3, 4, 5])
    assert c[0] == a[1]
    small = generate(lm, PROMPTS, n=3, params=params, seeds=list(range(9)), batch_size=1)
    assert small == a
    for conts in a:
        for cont in conts:
            assert all(0 <= u < N_UNITS for u in cont) and len(cont) <= 15


@pytest.mark.parametrize("make,offset", [(_llama, 3), (_opt, 4)])
def test_cpu_caches_agree_and_grow(make, offset, monkeypatch):
    """CPU decode: the shared-prompt cache (grown 32 steps at a time) and the full-length prefix cache both give
    generate's greedy output past a growth step; sampled output is the same with either."""
    from alignslm.lm import sampler

    model = make()
    lm = UnitLM(model, offset=offset, n_units=N_UNITS, bos_id=model.config.bos_token_id,
                eos_id=model.config.eos_token_id, pad_id=model.config.pad_token_id)
    g = SamplingParams(greedy=True, max_new=70, min_new=70)
    ref = _hf_generate(lm, PROMPTS, 1, do_sample=False, max_new_tokens=70, min_new_tokens=70)
    s = SamplingParams(max_new=40, min_new=40, temperature=1.0, top_k=8, top_p=0.9)
    decoded: list = []
    shared = generate(lm, PROMPTS, n=2, params=g), generate(lm, PROMPTS, n=3, params=s, stats=decoded)
    assert [(x.rows, x.steps, x.cuda_graph) for x in decoded] == [(3 * len(PROMPTS), 40, False)]
    monkeypatch.setattr(sampler, "_shared_prefix_ok", lambda model: False)
    prefix = generate(lm, PROMPTS, n=2, params=g), generate(lm, PROMPTS, n=3, params=s)
    assert shared[0] == prefix[0] == [[r[0], r[0]] for r in ref]
    assert all(len(c) == 70 for conts in shared[0] for c in conts)
    assert shared[1] == prefix[1]


@pytest.mark.parametrize("kw,err,match", [
    ({"temperature": 0.0}, SamplingError, "temperature"),
    ({"top_k": 0}, SamplingError, "top_k"),
    ({"top_p": 0.0}, SamplingError, "top_p"),
    ({"top_p": 1.01}, SamplingError, "top_p"),
    ({"max_new": 90}, SamplingError, "context"),
])
def test_bad_input_before_generation(kw, err, match, monkeypatch):
    lm = UnitLM(_llama(), offset=3, n_units=N_UNITS, bos_id=1, eos_id=2, pad_id=0)
    calls = []
    monkeypatch.setattr(lm.model, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(err, match=match):
        generate(lm, PROMPTS, n=2, params=SamplingParams(**{"max_new": 10, **kw}))
    with pytest.raises(UnitLMError, match="prompt 1"):
        generate(lm, [[1, 2], [3, N_UNITS]], n=2, params=SamplingParams(max_new=10))
    with pytest.raises(SamplingError, match="seed"):
        generate(lm, PROMPTS, n=2, params=SamplingParams(max_new=10), seeds=[1, 2])
    assert calls == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_greedy_identical_to_generate_with_cuda_graph():

    model = _llama().cuda()
    lm = UnitLM(model, offset=3, n_units=N_UNITS, bos_id=1, eos_id=2, pad_id=0)
    decoded: list = []
    ours = generate(lm, PROMPTS, n=2, params=SamplingParams(greedy=True, max_new=30), stats=decoded)
    assert decoded[0].cuda_graph, "the decode step was not captured in a CUDA graph"
    ref = _hf_generate(lm, PROMPTS, 1, do_sample=False, max_new_tokens=30)
    assert ours == [[r[0], r[0]] for r in ref]
    # sampled, twice: reproducible on the device (Triton kernel + graph replays)
    p = SamplingParams(max_new=20, temperature=1.0, top_k=10, top_p=0.9)
    a = generate(lm, PROMPTS, n=3, params=p, seeds=list(range(9)))
    assert a == generate(lm, PROMPTS, n=3, params=p, seeds=list(range(9)))


def test_transformers_internals_the_decode_loop_uses_are_in_place():
    """Fails, naming the attribute and the installed transformers version, when an upgrade moves an internal
    the decode loop relies on (cache layers, the attention implementation switch, the SDPA function)."""
    from alignslm.lm import sampler

    assert sampler.transformers_internals_problems() == []


def test_a_moved_transformers_internal_is_a_clear_error(monkeypatch):
    import transformers

    from alignslm.lm import sampler

    class StaticLayer:  # a transformers release whose cache layer lost lazy_initialization
        def __init__(self, max_cache_len: int):
            self.max_cache_len = max_cache_len

    monkeypatch.setattr(sampler, "StaticLayer", StaticLayer)
    problems = sampler.transformers_internals_problems()
    assert len(problems) == 1 and f"transformers {transformers.__version__}" in problems[0]
    assert "StaticLayer.lazy_initialization is gone" in problems[0]
    monkeypatch.setattr(sampler, "_PrefixLayer", StaticLayer)
    monkeypatch.setattr(sampler, "_shared_prefix_ok", lambda model: False)  # the prefix cache
    lm = UnitLM(_llama(), offset=3, n_units=N_UNITS, bos_id=1, eos_id=2, pad_id=0)
    with pytest.raises(sampler.TransformersAPIError, match="lazy_initialization is gone"):
        generate(lm, PROMPTS, n=2, params=SamplingParams(greedy=True, max_new=5))
