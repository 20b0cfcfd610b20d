"""Generation on held-out prompts, through the pipeline's own components.

:func:`held_out_prompts` picks the prompts (test split, then dev; never train); :class:`GenerationSetup` loads
the model-independent components once (vocoder, ASR, judge) and, per model, samples, vocodes, transcribes
and judges with the rounds' per-item functions; the statistics of its rows are :mod:`alignslm.eval.stats`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from alignslm.eval.stats import per_prompt_mean, summarize_generations, summarize_genppl

if TYPE_CHECKING:
    from alignslm.config import Config, JudgeConfig


def held_out_prompts(manifest: Sequence[Mapping], units: Mapping[str, Mapping], frame_rate: float, n: int,
                     seconds: float, word_boundary: bool, rejects: Any = None) -> list[dict]:
    """Up to ``n`` prompts from the test split, then dev (sorted by utt_id): never from train.

    Utterances that cannot give a prompt are recorded in ``rejects`` (when given) and skipped.
    """
    from alignslm.lm.prompts import PromptError, make_prompt

    rank = {"test": 0, "dev": 1}
    pool = sorted((r for r in manifest if r.get("split") in rank), key=lambda r: (rank[r["split"]], r["utt_id"]))
    out: list[dict] = []
    for r in pool:
        if len(out) >= n:
            break
        u = units.get(r["utt_id"])
        if u is None:
            continue  # rejected by the tokenize stage (its rejects.jsonl says why)
        try:
            p = make_prompt(u["units"], u.get("durations"), frame_rate, seconds, r.get("words"), word_boundary)
        except PromptError as e:
            if rejects is not None:
                rejects.add(r["utt_id"], f"prompt: {e}")
            continue
        words_ = [w["word"] for w in (r.get("words") or []) if float(w["end"]) <= p.end_s + 1e-6]
        out.append({"prompt_id": r["utt_id"], "prompt": p.units, "prompt_end_s": p.end_s, "path": r["path"],
                    "split": r["split"], "reference": " ".join(words_) if words_ else None,
                    "at_word": p.at_word_boundary,
                    "truth": [int(x) for x in u["units"][len(p.units):]]})  # the true continuation
    return out


class GenerationSetup:
    """Held-out prompts + the model-independent components (vocoder, ASR, judge), loaded once.

    :meth:`evaluate` samples ``sample.n_continuations`` continuations per prompt with the given unit LM and
    fixed seeds (the same for every model), vocodes, transcribes and judges them (alignslm.lm.sampler,
    alignslm.vocoder, alignslm.speech.asr, alignslm.judge), and returns (summary, examples).
    """

    def __init__(self, cfg: Config, prompts: list[dict], vocoder: Any, asr: Any, backend: Any, out: Any,
                 seeds: list[int]):
        from alignslm.judge import LLMScoreJudge, PerplexityJudge
        from alignslm.judge.signal import rules_from

        self.cfg, self.prompts, self.vocoder, self.asr, self.out = cfg, prompts, vocoder, asr, out
        self.seeds = seeds  # prompt-major, one per continuation
        self.rules = rules_from(cfg.judge)  # the screen and the signal, as in the judge stage
        self.metric = signal_metric(cfg.judge)  # the judge's signal, the one the pairs were built from
        self.judge = None  # the 1-5 score: in score mode, or on request (eval.also_score; slow on a CPU)
        if self.metric == "score" or cfg.eval.also_score:
            self.judge = LLMScoreJudge(backend, expected=cfg.judge.expected_score,
                                       max_new_tokens=cfg.judge.max_new_tokens)
        self.ppl = PerplexityJudge(backend)
        self.prompt_texts, self.prompt_wer, self.prompt_paths = self._prompt_side()

    @classmethod
    def build(cls, ctx: Any) -> GenerationSetup:
        from alignslm.judge import load_backend
        from alignslm.rundir import read_json, read_jsonl
        from alignslm.speech.asr import asr_device, load_asr
        from alignslm.vocoder import load_vocoder

        cfg = ctx.cfg
        manifest = [{**r, "path": str(ctx.inputs["corpus"] / r["path"])}  # paths relative to the corpus dir
                    for r in read_jsonl(ctx.inputs["corpus"] / "manifest.jsonl")]
        units = {r["utt_id"]: r for r in read_jsonl(ctx.inputs["tokenize"] / "units.jsonl")}
        frame_rate = float(read_json(ctx.inputs["tokenize"] / "tokenizer.json")["frame_rate"])
        prompts = held_out_prompts(manifest, units, frame_rate, cfg.eval.n_prompts, cfg.sample.prompt_seconds,
                                   cfg.sample.word_boundary, ctx.rejects)
        if not prompts:
            raise ValueError(f"no held-out (test/dev) utterance of {ctx.inputs['corpus']}/manifest.jsonl gives "
                             f"a {cfg.sample.prompt_seconds} s prompt; lower sample.prompt_seconds or set "
                             "eval.n_prompts=0")
        n = cfg.sample.n_continuations
        seeds = [ctx.seed("generation", p["prompt_id"], k) for p in prompts for k in range(n)]
        from alignslm.impl import resolve_device

        dev = resolve_device(cfg.run.device)
        return cls(cfg, prompts, load_vocoder(ctx.inputs["vocoder"], device=dev),
                   load_asr(cfg.asr, device=asr_device(cfg.run.device)),
                   load_backend(cfg.judge, ctx.out / "judge_cache.jsonl", device=dev, cache_dir=cfg.run.cache_dir),
                   ctx.out, seeds)

    def protocol(self) -> dict:
        s, j = self.cfg.sample, self.cfg.judge
        judge_lm = f"{j.backend}:{j.model_path or 'SmolLM2-135M-Instruct'}"
        return {"n_prompts": len(self.prompts), "n_continuations": s.n_continuations,
                "prompt_split": "/".join(sorted({p["split"] for p in self.prompts})),
                "prompt_seconds": s.prompt_seconds,
                "sampling": {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
                             "max_new_units": s.max_new_units},
                "judge": f"{judge_lm} "
                         + (f"({'expected digit score' if j.expected_score else 'parsed score'})"
                            if self.metric == "score" else "(perplexity of the transcript given the prompt's)"),
                "judge_metric": self.metric,
                "genppl": {"lm": judge_lm, "context": self.rules.neutral} if self.cfg.eval.genppl else None,
                "prompt_wer_n": sum(p["reference"] is not None for p in self.prompts),
                "prompts_at_word_end": sum(bool(p.get("at_word")) for p in self.prompts)}

    def _prompt_side(self) -> tuple[list[str], float | None, list[str]]:
        """Transcripts of the original prompt audio (the judge's context), cut, written and transcribed as the
        round's vocode and transcribe stages do, and the resynthesis WER."""
        from alignslm.speech.audio import write_prompt_wav
        from alignslm.textmetrics import wer

        paths = []
        for p in self.prompts:
            path = f"prompts/{p['prompt_id']}.wav"  # relative to the evaluate directory
            write_prompt_wav(p["path"], p["prompt_end_s"], self.out / path)
            paths.append(path)
        texts = [r.text for r in self.asr.transcribe_paths([self.out / path for path in paths])]
        with_ref = [i for i, p in enumerate(self.prompts) if p["reference"]]
        pwer = None
        if with_ref:
            hyps = self.asr.transcribe(self._vocode([self.prompts[i]["prompt"] for i in with_ref]))
            pwer = wer([self.prompts[i]["reference"] for i in with_ref], hyps)
        return texts, pwer, paths

    def _vocode(self, units_list: list[list[int]]) -> list:
        from alignslm.vocoder import vocode_16k

        return vocode_16k(self.vocoder, units_list, self.cfg.vocoder.batch_size, self.cfg.vocoder.threads)

    def evaluate(self, ctx: Any, name: str, lm: Any) -> tuple[dict, list[dict]]:
        from alignslm.eval.genppl import add_genppl
        from alignslm.judge import judge_asked
        from alignslm.judge.rubric import score_histogram
        from alignslm.lm.sampler import SamplingParams, generate

        s, n = self.cfg.sample, self.cfg.sample.n_continuations
        params = SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, max_new=s.max_new_units)
        conts = generate(lm, [p["prompt"] for p in self.prompts], n=n, params=params, seeds=self.seeds,
                         batch_size=s.batch_size)  # [P][n] unit lists
        rows = [{"prompt_id": p["prompt_id"], "k": k, "seed": self.seeds[i * n + k], "continuation": conts[i][k],
                 "prompt_text": self.prompt_texts[i], "prompt_path": self.prompt_paths[i], "reject": None}
                for i, p in enumerate(self.prompts) for k in range(n)]
        self.judge_rows(rows, name)
        genppl = (add_genppl(rows, self.ppl.backend, self.rules.neutral, self.rules.kind)  # alignslm.eval.genppl
                  if self.cfg.eval.genppl else None)
        for r in rows:
            if r["reject"]:
                ctx.rejects.add(f"{name}/{r['prompt_id']}/{r['k']}", r["reject"])
        from alignslm.rundir import write_jsonl

        write_jsonl(self.out / name / "generations.jsonl", rows)
        summary = summarize_generations(rows, self.cfg.eval.bootstrap, 0, self.prompt_wer, self.metric)
        summary["score_histogram"] = score_histogram([r.get("score") for r in rows])  # alignslm.judge.rubric
        if genppl is not None:
            summary["genppl"] = {**summarize_genppl(rows, self.cfg.eval.bootstrap, 0), **genppl}
            summary["per_prompt"]["log_genppl"] = per_prompt_mean(rows, "log_genppl")
        asked = [r for r in rows if judge_asked(r)]  # as the judge stage counts (run.max_failed_share)
        summary["judge_tried"] = len(asked)  # sent to the judge; judge_failed: it gave nothing back
        summary["judge_failed"] = sum((r["reject"] or "").startswith("judge:") for r in asked)
        examples = [r for r in rows if r["k"] == 0][: self.cfg.eval.n_examples]
        return summary, [{k: r.get(k) for k in ("prompt_id", "k", "prompt_text", "text", "score", "perplexity",
                                                "path", "prompt_path")} for r in examples]

    def judge_rows(self, rows: list[dict], name: str) -> list[dict]:
        """Vocode, transcribe and judge rows (prompt_id, k, continuation units, prompt_text) in place, with the
        round stages' component functions and filters; audio goes to ``<out>/<name>/audio``."""
        self._audio_and_text(rows, name)
        self._judge(rows)
        return rows

    def _audio_and_text(self, rows: list[dict], name: str) -> None:
        """The vocode and transcribe stages' path: alignslm.vocoder.unit_problem / vocode_16k, a 16-bit wav,
        Whisper on that file, alignslm.speech.asr.transcript_error."""
        from alignslm.judge import transcription_reject
        from alignslm.speech.asr import transcript_error
        from alignslm.speech.audio import write_wav
        from alignslm.vocoder import unit_problem

        for r in rows:
            r["reject"] = r.get("reject") or unit_problem(r["continuation"], self.vocoder.n_units)
        ok = [r for r in rows if not r["reject"]]
        for r, w in zip(ok, self._vocode([r["continuation"] for r in ok])):
            r["path"] = f"{name}/audio/{r['prompt_id']}_k{r['k']}.wav"  # relative to the evaluate directory
            write_wav(self.out / r["path"], w)
        results = self.asr.transcribe_paths([self.out / r["path"] for r in ok]) if ok else []
        for r, a in zip(ok, results):
            r["text"] = a.text
            r["seconds"], r["avg_logprob"], r["no_speech_prob"] = a.seconds, a.avg_logprob, a.no_speech_prob
            r["reject"] = transcription_reject(transcript_error(a), a.text)

    def _judge(self, rows: list[dict]) -> None:
        """The judge stage's path (alignslm.judge.judge_transcripts: auto-BLEU, screen, perplexities, sense),
        plus, in score mode or with eval.also_score, the 1-5 score."""
        from alignslm.judge import judge_transcripts

        judge_transcripts(rows, self.ppl, self.judge, self.rules, list(self.prompt_texts),
                          score_required=self.metric == "score")


def signal_metric(judge_cfg: JudgeConfig) -> str:
    """The metric the pairs are built from: score (1-5), perplexity (ln-ppl) or sense (alignslm.judge.signal)."""
    if judge_cfg.mode == "score":
        return "score"
    return "perplexity" if judge_cfg.signal == "lnppl" else "sense"
