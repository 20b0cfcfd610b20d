"""The rounds and the held-out evaluation vocode, transcribe and judge with the same component functions: the
same continuations through the vocode -> transcribe -> judge stages and through alignslm.eval.generation's
GenerationSetup get the same rejects (reason for reason) and the same signal values."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import signal_rules

from alignslm.config import load_config
from alignslm.eval.generation import GenerationSetup
from alignslm.judge import TransformersBackend, judge_asked, judge_transcripts, transcription_reject
from alignslm.judge.rubric import JudgeResult, score_histogram
from alignslm.rundir import StageContext, read_jsonl, write_jsonl
from alignslm.speech.asr import ASRResult, transcript_error
from alignslm.speech.audio import read_audio, write_wav
from alignslm.vocoder import unit_problem

PROMPT = "Anna washed the pan in the kitchen."
# what the fake ASR hears in a clip, by the clip's first unit (the fake vocoder writes it into the audio)
HEARD = {1: ASRResult("Thank you.", avg_logprob=-0.3, seconds=0.5),  # a Whisper hallucination: screened
         2: ASRResult("", error="runaway output: 40 tokens for 0.5s of audio", seconds=0.5),
         3: ASRResult("the dog barked at the cook and ran to the farm", avg_logprob=-0.4, seconds=0.5),
         4: ASRResult("go to the farm go to the farm go to the farm", avg_logprob=-0.2, seconds=0.5),  # a loop
         5: ASRResult("  ", seconds=0.5),  # nothing heard
         6: ASRResult("#### 1234 !!!", avg_logprob=-0.5, seconds=0.5),  # garbage
         50: ASRResult(PROMPT, seconds=1.0)}  # the prompt audio
CONTINUATIONS = [[1, 7], [2], [3, 8, 9], [4, 4], [5], [6], [], [99]]  # [] and 99 cannot be vocoded


class FakeVocoder:
    kind, sample_rate, n_units = "fake", 16000, 20

    def vocode(self, units_list, durations=None, batch_size=None):  # noqa: ANN001, ANN201
        return [np.full(8000, u[0] / 100, dtype=np.float32) for u in units_list]


class FakeASR:
    def transcribe_paths(self, paths):  # noqa: ANN001, ANN201
        return [HEARD[int(round(float(read_audio(p, allow_silence=True)[0]) * 100))] for p in paths]

    def transcribe(self, wavs):  # noqa: ANN001, ANN201
        return [HEARD[int(round(float(w[0]) * 100))].text for w in wavs]


@pytest.fixture
def fakes(monkeypatch):
    import alignslm.vocoder
    from alignslm.stages import transcribe

    monkeypatch.setattr(alignslm.vocoder, "load_vocoder", lambda *a, **k: FakeVocoder())
    monkeypatch.setattr(transcribe, "load_asr", lambda *a, **k: FakeASR())


def test_rounds_and_evaluation_refuse_the_same_continuations(tmp_path, tiny_judge_dir, fakes):
    from alignslm.stages import judge, transcribe, vocode

    cfg = load_config(overrides=[f"judge.model_path={tiny_judge_dir}", "judge.signal=pmi", "judge.dtype=float32",
                                 f"run.run_dir={tmp_path}", "run.device=cpu"])
    corpus = tmp_path / "corpus"
    write_wav(corpus / "u0.wav", np.full(32000, 0.5, dtype=np.float32))
    write_jsonl(corpus / "manifest.jsonl", [{"utt_id": "u0", "path": "u0.wav", "split": "test"}])
    samples = [{"prompt_id": "u0", "utt_id": "u0", "k": k, "continuation": c, "prompt_end_s": 1.0}
               for k, c in enumerate(CONTINUATIONS)]
    write_jsonl(tmp_path / "round-1" / "sample" / "samples.jsonl", samples)
    inputs = {"sample": tmp_path / "round-1" / "sample", "corpus": corpus, "vocoder": tmp_path / "vocoder"}
    for mod, name in ((vocode, "vocode"), (transcribe, "transcribe"), (judge, "judge")):
        ctx = StageContext(name=name, cfg=cfg, run_dir=tmp_path, out=tmp_path / "round-1" / name, round=1,
                           inputs={**inputs, "vocode": tmp_path / "round-1" / "vocode",
                                   "transcribe": tmp_path / "round-1" / "transcribe"}, progress=False)
        mod.run(ctx)
    rejects = {r["id"]: r["reason"] for r in read_jsonl(tmp_path / "round-1" / "vocode" / "rejects.jsonl")}
    rounds = {r["k"]: r for r in read_jsonl(tmp_path / "round-1" / "judge" / "judgments.jsonl")}

    backend = TransformersBackend(tiny_judge_dir, dtype="float32")
    prompts = [{"prompt_id": "u0", "path": str(corpus / "u0.wav"), "prompt_end_s": 1.0, "reference": None,
                "split": "test", "prompt": [1, 2]}]
    gen = GenerationSetup(cfg, prompts, FakeVocoder(), FakeASR(), backend, tmp_path / "evaluate", [0])
    assert gen.prompt_texts == [PROMPT]
    rows = [{"prompt_id": "u0", "k": k, "continuation": c, "prompt_text": gen.prompt_texts[0], "reject": None}
            for k, c in enumerate(CONTINUATIONS)]
    gen.judge_rows(rows, "base")

    for r in rows:  # not vocoded: the vocode stage's rejects, with the same reason
        if r["k"] not in rounds:
            assert r["reject"] == rejects[f"u0/{r['k']}"] == unit_problem(r["continuation"], 20)
    judged = [r for r in rows if r["k"] in rounds]
    assert len(judged) == 6
    for r in judged:
        o = rounds[r["k"]]
        assert r["reject"] == o["error"], r["k"]
        assert r["screened"] == o["screened"] and r["autobleu"] == o["autobleu"]
        assert r["sense"] == pytest.approx(o["sense"]) if o["sense"] is not None else r["sense"] is None
        assert judge_asked(r) == o["asked"]
    why = {r["k"]: r["reject"] for r in judged}
    assert why[0].startswith("hallucination") and why[1].startswith("transcription failed: runaway output")
    assert why[2] is None and why[3].startswith("repetition") and why[4] == "transcription failed: empty transcript"
    assert why[5].startswith("garbage")


def test_transcript_error_and_transcription_reject():
    assert transcript_error(ASRResult("a cat")) is None
    assert transcript_error(ASRResult(" ")) == "empty transcript"
    assert transcript_error(ASRResult(" "), "prompt transcript") == "empty prompt transcript"
    assert transcript_error(ASRResult("", error="no speech (0.9)")) == "no speech (0.9)"
    assert transcription_reject("no speech (0.9)", "") == "transcription failed: no speech (0.9)"
    assert transcription_reject("prompt: empty", "a cat sat") is None and transcription_reject(None, "") is None


class Scorer:
    def score(self, prompts, texts):  # noqa: ANN001, ANN201
        return [JudgeResult(4.0, raw="Score: 4") if "cat" in t else JudgeResult(None, error="unparseable")
                for t in texts]


def test_judge_transcripts_scores_accepted_rows_and_requires_a_score_in_score_mode():
    def rows():  # noqa: ANN202
        return [{"prompt_text": PROMPT, "text": t, "reject": r} for t, r in
                (("the cat sat on the mat", None), ("a dog ran to the farm", None), ("", "transcription failed: x"))]

    got = rows()
    judge_transcripts(got, None, Scorer(), signal_rules(), [PROMPT], score_required=True)
    assert [r["score"] for r in got] == [4.0, None, None]
    assert [r["reject"] for r in got] == [None, "judge: unparseable", "transcription failed: x"]
    assert [judge_asked(r) for r in got] == [True, True, False] and got[2]["autobleu"] is None
    got = rows()
    judge_transcripts(got, None, Scorer(), signal_rules(), [PROMPT], score_required=False)  # eval.also_score
    assert [r["reject"] for r in got] == [None, None, "transcription failed: x"]
    assert score_histogram([r["score"] for r in got]) == {"1": 0, "2": 0, "3": 0, "4": 1, "5": 0}
