"""Speak continuations of your own prompts with an aligned model:

    python -m alignslm.generate --run-dir D [--round N] prompt.wav [more.wav ...] --out DIR

Each prompt (any wav; resampled to 16 kHz mono) is tokenized with the run's tokenizer, continued by the
round-N policy (base + round-N/train/adapter; default: the last trained round, 0 = the base) with the
run's sampling settings (sample.temperature, top_k, top_p, max_new_units), vocoded with the run's vocoder
and transcribed with the run's ASR, all in batches.  Writes:

    DIR/<prompt stem>_<k>.wav        continuation k of each prompt (k < --n)
    DIR/generations.jsonl            prompt, k, path, prompt_units, units, prompt_text, text, error, seed

A continuation that cannot be vocoded (EOS first, a unit outside the vocoder's table) has no wav: its row
says why in ``error`` (``path`` null), and the other continuations are written as usual.

A prompt longer than the model's context leaves room for max_new_units by keeping its END (a warning says
so).  Seeds come from (run.seed, prompt stem, k), so the same command writes the same files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alignslm import logger
from alignslm.rundir import hash_str, policy_adapters, write_jsonl


def generate_continuations(run_dir: str | Path, prompts: list[str | Path], out: str | Path, rnd: int | None = None,
                           n: int | None = None, device: str = "cpu") -> list[dict]:
    """Continuations of ``prompts`` (wav paths) by round ``rnd``'s policy; see the module docstring."""
    from alignslm.config import load_config
    from alignslm.export import check_round, last_trained_round
    from alignslm.lm.sampler import SamplingParams, generate
    from alignslm.lm.unitlm import load_unitlm
    from alignslm.speech.asr import load_asr
    from alignslm.speech.audio import read_audio, write_wav
    from alignslm.speech.tokenizer import load_tokenizer
    from alignslm.vocoder import load_vocoder, unit_problem, vocode_16k

    run_dir, out = Path(run_dir).expanduser(), Path(out).expanduser()
    rnd = last_trained_round(run_dir) if rnd is None else rnd
    check_round(run_dir, rnd)
    cfg = load_config(run_dir / "config.yaml")
    s = cfg.sample
    n = n or s.n_continuations
    wavs = [read_audio(p) for p in prompts]
    tok = load_tokenizer(run_dir / "tokenize", device=device)
    units = [u.tolist() for u, _ in tok.encode(wavs)]
    lm = load_unitlm(run_dir / "unitlm", adapters=policy_adapters(run_dir, rnd), merge=True,
                     support=cfg.unitlm.support, device=device, dtype=cfg.unitlm.dtype)
    room = (lm.max_context() or 10**9) - s.max_new_units - int(lm.bos_id is not None)
    for p, u in zip(prompts, units):
        if len(u) > room:
            logger.warning("generate: %s has %d units; keeping its last %d (context %s - max_new_units %d)", p,
                           len(u), room, lm.max_context(), s.max_new_units)
    units = [u[-room:] if len(u) > room else u for u in units]
    stems = [Path(p).stem for p in prompts]
    seeds = [int(hash_str(str(cfg.run.seed), "generate", st, str(k))[:8], 16) for st in stems for k in range(n)]
    params = SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, max_new=s.max_new_units)
    conts = generate(lm, units, n=n, params=params, seeds=seeds, batch_size=s.batch_size)
    flat = [c for per_prompt in conts for c in per_prompt]
    voc = load_vocoder(run_dir / "vocoder", device=device)
    # the rounds' per-item rule: a continuation that cannot be vocoded (EOS first, a unit outside the table)
    # is that item's error, not the command's
    problems = [unit_problem(c, voc.n_units) for c in flat]
    ok = [i for i, p in enumerate(problems) if p is None]
    audio = dict(zip(ok, vocode_16k(voc, [flat[i] for i in ok], cfg.vocoder.batch_size, cfg.vocoder.threads)))
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{st}_{k}.wav" for st in stems for k in range(n)]
    for i, w in audio.items():
        write_wav(paths[i], w)
    asr = load_asr(cfg.asr, device=device)
    prompt_text = [r.text for r in asr.transcribe_paths([str(p) for p in prompts])]
    texts = dict(zip(ok, asr.transcribe_paths([str(paths[i]) for i in ok])))
    rows = [{"prompt": str(prompts[i // n]), "k": i % n, "path": paths[i].name if i in texts else None,
             "prompt_units": units[i // n], "units": flat[i], "prompt_text": prompt_text[i // n],
             "text": texts[i].text if i in texts else "", "error": texts[i].error if i in texts else problems[i],
             "seed": seeds[i], "round": rnd} for i in range(len(flat))]
    write_jsonl(out / "generations.jsonl", rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alignslm.generate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="the run directory (run.run_dir)")
    p.add_argument("--round", type=int, default=None, help="policy round (0 = base; default: the last trained)")
    p.add_argument("--out", required=True, help="output directory for the wavs and generations.jsonl")
    p.add_argument("--n", type=int, default=None, help="continuations per prompt (default: sample.n_continuations)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("prompts", nargs="+", help="prompt wav files")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        rows = generate_continuations(args.run_dir, args.prompts, args.out, args.round, args.n, args.device)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in rows:
        print(f"{r['path']}: {r['text']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
