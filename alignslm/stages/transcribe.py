"""Stage transcribe: round-N/vocode/audio.jsonl (continuation wavs + prompt wavs) -> transcripts.jsonl.

Each continuation row gets ``prompt_text`` (the transcript of its prompt audio, transcribed once per prompt)
and ``text``.  Unreadable audio, runaway/looping ASR output and empty transcripts are recorded in
rejects.jsonl and kept in transcripts.jsonl with ``text`` "" and an ``error``, so the judge skips them.
"""

from __future__ import annotations

from pathlib import Path

from alignslm.rundir import StageContext, read_jsonl, run_sharded
from alignslm.speech.asr import asr_device, check_model_dir, default_model_dir, load_asr, transcript_error


def _abs(path: str, base: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else base / p)


def run(ctx: StageContext) -> dict:
    vdir = ctx.inputs["vocode"]
    rows = read_jsonl(vdir / "audio.jsonl")
    asr = load_asr(ctx.cfg.asr, device=asr_device(ctx.cfg.run.device))

    def process(chunk: list[dict]) -> list[dict]:
        prompt_paths = sorted({_abs(r["prompt_path"], vdir) for r in chunk if r.get("prompt_path")})
        prompt_res = dict(zip(prompt_paths, asr.transcribe_paths(prompt_paths)))
        cont = asr.transcribe_paths([_abs(r["path"], vdir) for r in chunk])
        out = []
        for r, res in zip(chunk, cont):
            pr = prompt_res.get(_abs(r["prompt_path"], vdir)) if r.get("prompt_path") else None
            err = transcript_error(res)
            perr = "no prompt_path in audio.jsonl" if pr is None else transcript_error(pr, "prompt transcript")
            item = f"{r['prompt_id']}/{r['k']}"
            if err:
                ctx.rejects.add(item, f"continuation: {err}", path=r["path"])
            if perr:
                ctx.rejects.add(item, f"prompt: {perr}", path=r.get("prompt_path"))
            out.append({"prompt_id": r["prompt_id"], "k": r["k"],
                        "prompt_text": "" if pr is None else pr.text, "text": "" if err else res.text,
                        "error": err or perr, "asr_raw": res.raw, "seconds": res.seconds,
                        "avg_logprob": res.avg_logprob, "no_speech_prob": res.no_speech_prob})
        return out

    done = run_sharded(ctx, rows, ctx.cfg.asr.shard_size, process, "transcripts.jsonl")
    n_ok = sum(r["error"] is None for r in done)
    # what the ASR heard (no speech, a loop) is a result about the continuation; unreadable audio is a failure
    broken = sum(r["error"] is not None and not r["error"].startswith(HEARD) for r in done)
    return {"clips": len(done), "transcribed": n_ok, "failed": len(done) - n_ok, "items_tried": len(done),
            "items_failed": broken,
            "empty": sum(r["error"] == "empty transcript" for r in done),
            "words_per_clip": sum(len(r["text"].split()) for r in done) / max(1, len(done))}


HEARD = ("no speech", "runaway output", "repetition loop", "empty transcript", "empty prompt transcript")


def check(cfg) -> list[str]:  # noqa: ANN001 - Config
    if cfg.asr.model_path and not Path(cfg.asr.model_path).expanduser().exists():
        return []  # said once, from the stage graph's external inputs, by alignslm.run.check_paths
    try:
        path = Path(cfg.asr.model_path).expanduser() if cfg.asr.model_path else default_model_dir()
    except Exception as e:  # noqa: BLE001
        return [str(e)]
    return check_model_dir(path)
