"""The evaluation suites beside ZeroSpeech 2021 and StoryCloze: SALMon (alignslm.eval.salmon), ProsAudit
(alignslm.eval.prosaudit), multi-speaker StoryCloze (alignslm.eval.multispeaker) and continuation-only
StoryCloze (alignslm.eval.continuation), wired into the benchmarks and evaluate stages through the few calls
below.

Where the data comes from (the benchmarks stage, recorded in ``benchmarks.json`` under ``salmon``,
``prosaudit`` and ``multispeaker``):

* SALMon: ``benchmarks.salmon_root`` (the released ``salmon_benchmark`` folder) when set; otherwise the demo
  builds its mini SALMon under ``data/salmon`` (alignslm.demo.salmon; ``benchmarks.salmon_pairs`` per part,
  0 = none), and a real run (``benchmarks.root`` set) skips SALMon with a note saying which key to set.
* ProsAudit: ``benchmarks.prosaudit_root`` when set; otherwise the demo builds the lexical part of a mini
  ProsAudit under ``data/prosaudit`` (alignslm.demo.prosaudit; ``benchmarks.prosaudit_pairs``, 0 = none; no
  protosyntax part, alignslm.eval.prosaudit says why), and a real run notes that it was not measured.
* Multi-speaker sSC/tSC: ``benchmarks.multispeaker_root`` (ssc/ and/or tsc/ in the single-speaker layout) when
  set; otherwise the demo builds its own under ``data/multispeaker`` (alignslm.demo.multispeaker; the first
  ``benchmarks.multispeaker_pairs`` stories of the demo sSC/tSC, 0 = none), and a real run notes that it was
  not measured.

Results (the evaluate stage, per model): ``benchmarks["salmon/<part>"]``, ``benchmarks["prosaudit"]``,
``benchmarks["ssc_multispeaker"]``/``["tsc_multispeaker"]`` and ``benchmarks["ssc_continuation"]``/
``["tsc_continuation"]`` (and ``["ssc_multispeaker_continuation"]`` ...), each with ``all`` (so the round
comparisons and the seeds merge pick them up) and ``seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignslm import logger
from alignslm.eval import continuation, multispeaker, prosaudit, salmon
from alignslm.rundir import relative_path

if TYPE_CHECKING:
    from alignslm.config import EvalConfig

DEMO_PROSAUDIT = ("demo mini ProsAudit: the lexical part only (the same pause between two words vs inside a word); "
                  "no protosyntax part: eSpeak NG cannot make a strong prosodic boundary without its own pause "
                  "(alignslm.eval.prosaudit)")


# --------------------------------------------------------------------------------------------------
# The benchmarks stage
# --------------------------------------------------------------------------------------------------


def prepare(b: Any, out: Path, demo: bool, seed: int, cache_dir: str, workers: int = 1) -> dict:
    """Build (demo) or check (real) SALMon, ProsAudit and the multi-speaker StoryCloze; returns the
    ``benchmarks.json`` entries {"salmon": {...}, "prosaudit": {...}, "multispeaker": {...}}, each with ``root``
    (relative to ``out``, or None) and ``note``."""
    return {"salmon": _prepare_salmon(b, out, demo, seed, cache_dir, workers),
            "prosaudit": _prepare_prosaudit(b, out, demo, seed, cache_dir, workers),
            "multispeaker": _prepare_multispeaker(b, out, demo, seed, cache_dir, workers)}


def _prepare_salmon(b: Any, out: Path, demo: bool, seed: int, cache_dir: str, workers: int) -> dict:
    t0 = time.perf_counter()
    if b.salmon_root:
        root = Path(b.salmon_root).expanduser().resolve()
        sets = salmon.load_salmon(root)
        return {"root": str(root), "source": "real", "parts": {k: len(v.pairs) for k, v in sets.items()},
                "note": None, "seconds": round(time.perf_counter() - t0, 2)}
    if not demo:
        note = ("SALMon skipped: a real run needs benchmarks.salmon_root (the released salmon_benchmark folder, "
                "one sub-folder per part)")
        logger.warning(note)
        return {"root": None, "source": None, "note": note}
    if b.salmon_pairs <= 0:
        return {"root": None, "source": None, "note": "SALMon not built (benchmarks.salmon_pairs=0)"}
    from alignslm.demo.salmon import write_demo_salmon

    built = write_demo_salmon(out / "data" / "salmon", n_pairs=b.salmon_pairs, seed=seed, voices=list(b.voices),
                              rate=b.rate, n_topics=b.n_topics, cache_dir=cache_dir, workers=workers)
    skipped = "; ".join(f"{p}: {why}" for p, why in built["skipped"].items())
    return {"root": relative_path(out / "data" / "salmon", out), "source": "demo",
            "parts": {salmon.PREFIX + p: n for p, n in built["parts"].items()}, "skipped": built["skipped"],
            "note": ("demo mini SALMon (eSpeak NG voices, synthetic noises and rooms; sentiment and background "
                     "alignment not built)" + (f"; skipped: {skipped}" if skipped else "")),
            "seconds": built["seconds"], "tts_s": built["tts_s"]}


def _prepare_prosaudit(b: Any, out: Path, demo: bool, seed: int, cache_dir: str, workers: int) -> dict:
    t0 = time.perf_counter()
    if b.prosaudit_root:
        root = Path(b.prosaudit_root).expanduser().resolve()
        bs = prosaudit.load_prosaudit(root, b.split, check_audio=False)
        return {"root": str(root), "source": "real", "split": b.split, "pairs": len(bs.pairs), "note": None,
                "seconds": round(time.perf_counter() - t0, 2)}
    if not demo or b.prosaudit_pairs <= 0:
        why = "benchmarks.prosaudit_pairs=0" if demo else "a real run needs benchmarks.prosaudit_root"
        return {"root": None, "source": None, "note": f"ProsAudit not measured ({why})"}
    from alignslm.demo.prosaudit import write_demo_prosaudit

    built = write_demo_prosaudit(out / "data" / "prosaudit", n_pairs=b.prosaudit_pairs, seed=seed,
                                 voices=list(b.voices), rate=b.rate, n_topics=b.n_topics, cache_dir=cache_dir,
                                 workers=workers, split=b.split)
    return {"root": relative_path(out / "data" / "prosaudit", out), "source": "demo", "split": b.split,
            "pairs": built["pairs"], "note": DEMO_PROSAUDIT, "seconds": built["seconds"]}


def _prepare_multispeaker(b: Any, out: Path, demo: bool, seed: int, cache_dir: str, workers: int) -> dict:
    t0 = time.perf_counter()
    if b.multispeaker_root:
        root = Path(b.multispeaker_root).expanduser().resolve()
        sets = multispeaker.load_multispeaker(root, check_audio=False)
        return {"root": str(root), "source": "real", "pairs": {k: len(v.pairs) for k, v in sets.items()},
                "note": None, "seconds": round(time.perf_counter() - t0, 2)}
    n = min(b.multispeaker_pairs, b.n_pairs)
    voices = sorted(set(b.voices))
    why = None
    if not demo:
        why = "a real run needs benchmarks.multispeaker_root"
    elif n <= 0:
        why = "benchmarks.multispeaker_pairs=0"
    elif len(voices) < 2:
        why = f"needs two different voices in benchmarks.voices ({list(b.voices)})"
    if why:
        return {"root": None, "source": None, "note": f"multi-speaker sSC/tSC not measured ({why})"}
    from alignslm.demo.multispeaker import write_demo_multispeaker

    built = write_demo_multispeaker(out / "data" / "multispeaker", n_pairs=n, seed=seed, voices=voices,
                                    rate=b.rate, n_topics=b.n_topics, cache_dir=cache_dir, workers=workers)
    return {"root": relative_path(out / "data" / "multispeaker", out), "source": "demo",
            "pairs": {f"{k}{multispeaker.SUFFIX}": v for k, v in built["pairs"].items()},
            "note": (f"demo: the first {n} stories of the demo sSC/tSC, the context in one of {', '.join(voices)} "
                     "and both endings in another, drawn per story (alignslm.demo.multispeaker)"),
            "seconds": built["seconds"], "tts_s": built["tts_s"]}


def check(b: Any) -> list[str]:
    """--dry-run: the real SALMon / ProsAudit / multi-speaker StoryCloze layouts are complete (no audio read).
    A root that does not exist is not looked into: alignslm.run.check_paths says so once, from the stage graph."""
    from alignslm.eval.benchdata import BenchmarkError

    def present(root: str | None) -> bool:
        return bool(root) and Path(root).expanduser().exists()

    problems = []
    if present(b.salmon_root):
        try:
            salmon.load_salmon(b.salmon_root, check_audio=False)
        except BenchmarkError as e:
            problems += [f"benchmarks.salmon_root: {p}" for p in e.lines()]
    if present(b.prosaudit_root):
        try:
            prosaudit.load_prosaudit(b.prosaudit_root, b.split, check_audio=False)
        except BenchmarkError as e:
            problems += [f"benchmarks.prosaudit_root: {p}" for p in e.lines()]
    if present(b.multispeaker_root):
        try:
            multispeaker.load_multispeaker(b.multispeaker_root, check_audio=False)
        except BenchmarkError as e:
            problems += [f"benchmarks.multispeaker_root: {p}" for p in e.lines()]
    if min(b.salmon_pairs, b.prosaudit_pairs, b.multispeaker_pairs) < 0:
        problems.append("benchmarks.salmon_pairs, benchmarks.prosaudit_pairs and benchmarks.multispeaker_pairs "
                        "must be >= 0")
    return problems


# --------------------------------------------------------------------------------------------------
# The evaluate stage
# --------------------------------------------------------------------------------------------------


def load(bench_dir: Path, info: Mapping, split: str) -> dict:
    """name -> BenchmarkSet of every suite the benchmarks stage recorded (``salmon/<part>``, ``prosaudit``,
    ``ssc_multispeaker``, ``tsc_multispeaker``)."""
    out: dict = {}
    s = info.get("salmon") or {}
    if s.get("root"):
        out.update(salmon.load_salmon(bench_dir / s["root"]))
    p = info.get("prosaudit") or {}
    if p.get("root"):
        out[prosaudit.NAME] = prosaudit.load_prosaudit(bench_dir / p["root"], split)
    m = info.get("multispeaker") or {}
    if m.get("root"):
        out.update(multispeaker.load_multispeaker(bench_dir / m["root"]))
    return out


def score_model(lm: Any, units: Mapping, benches: Mapping, suite_units: Mapping, suites: Mapping, eval_cfg: EvalConfig,
                submission_dir: Path | None = None) -> dict[str, dict]:
    """Every suite's result for one model (see the module docstring); with eval.continuation_only also sSC and
    tSC, whole story and continuation only, from one pass (:func:`one_pass`); the multi-speaker sets' comparison
    with sSC/tSC on the same stories is added by :func:`add_comparisons`."""
    out: dict[str, dict] = {}
    parts = {k: v for k, v in suites.items() if k.startswith(salmon.PREFIX)}
    if parts:
        out.update(salmon.score_salmon(lm, suite_units, parts, eval_cfg.salmon_score, eval_cfg.score,
                                       eval_cfg.batch_size))
    if prosaudit.NAME in suites:
        sub = submission_dir / "prosaudit" if submission_dir is not None else None
        out[prosaudit.NAME] = prosaudit.score(lm, suite_units[prosaudit.NAME], suites[prosaudit.NAME], eval_cfg.score,
                                              eval_cfg.batch_size, sub)
    story = {k: v for k, v in benches.items() if k in one_pass(eval_cfg)}
    if story:
        out.update(continuation.score_storycloze_both(lm, units, story, eval_cfg.score, eval_cfg.batch_size))
    multi = {k: v for k, v in suites.items() if k.endswith(multispeaker.SUFFIX)}
    if multi:
        out.update(multispeaker.score(lm, suite_units, multi, eval_cfg.score, eval_cfg.batch_size,
                                      eval_cfg.continuation_only))
    return out


def add_comparisons(bench: dict, benches: Mapping, suites: Mapping, eval_cfg: EvalConfig) -> None:
    """After :func:`score_model` and the four benchmarks: each multi-speaker result gets its ``same_stories``
    comparison with sSC/tSC (alignslm.eval.multispeaker.add_same_stories; before the per-pair lists are
    moved out of the results)."""
    multispeaker.add_same_stories(bench, benches, suites, eval_cfg.bootstrap)


def one_pass(eval_cfg: EvalConfig) -> tuple[str, ...]:
    """The benchmarks :func:`score_model` scores itself (sSC/tSC whole story and continuation only from one
    pass, with eval.continuation_only); the stage leaves them out of alignslm.eval.scoring.score_benchmarks."""
    return ("ssc", "tsc") if eval_cfg.continuation_only else ()


def seconds(models: Mapping) -> dict[str, float]:
    """Total seconds per new metric over every model (for the stage summary)."""
    tot = {"salmon_s": 0.0, "prosaudit_s": 0.0, "multispeaker_s": 0.0, "continuation_only_s": 0.0, "genppl_s": 0.0}
    for m in models.values():
        for k, r in (m.get("benchmarks") or {}).items():
            key = ("salmon_s" if k.startswith(salmon.PREFIX) else "prosaudit_s" if k == prosaudit.NAME
                   else "continuation_only_s" if k.endswith(continuation.SUFFIX)
                   else "multispeaker_s" if k.endswith(multispeaker.SUFFIX) else None)
            if key:
                tot[key] += float(r.get("seconds") or 0.0)
        tot["genppl_s"] += float(((m.get("generation") or {}).get("genppl") or {}).get("seconds") or 0.0)
    return {k: round(v, 2) for k, v in tot.items()}


def protocol(eval_cfg: EvalConfig, suites: Mapping, info: Mapping) -> dict:
    """The protocol entries of the suites (stated in the report)."""
    parts = {k: len(v.pairs) for k, v in suites.items() if k.startswith(salmon.PREFIX)}
    s = info.get("salmon") or {}
    return {"salmon": {"score": eval_cfg.salmon_score, "pairs": parts, "official_commit": salmon.OFFICIAL_COMMIT,
                       "source": s.get("source"), "note": s.get("note")},
            "prosaudit": {"pairs": len(suites[prosaudit.NAME].pairs) if prosaudit.NAME in suites else 0,
                          "note": (info.get("prosaudit") or {}).get("note")},
            "multispeaker": {"pairs": {k: len(v.pairs) for k, v in suites.items() if k.endswith(multispeaker.SUFFIX)},
                             "source": (info.get("multispeaker") or {}).get("source"),
                             "note": (info.get("multispeaker") or {}).get("note"),
                             "continuation_only": bool(eval_cfg.continuation_only)},
            "continuation_only": bool(eval_cfg.continuation_only)}


def protocol_lines(results: Mapping) -> list[str]:
    """The report's Protocol lines for SALMon, ProsAudit, continuation-only StoryCloze and GenPPL."""
    from alignslm.eval.genppl import protocol_line

    p = results.get("protocol", {})
    s = p.get("salmon") or {}
    score = ("official rule: the units with no BOS/EOS, per-token mean of log p over units 2..n (slp-rl/salmon "
             f"@ {str(s.get('official_commit', ''))[:10]}, TWIST configs mean_nll=true)" if s.get("score") == "official"
             else "the eval.score protocol over [BOS, units, EOS]")
    lines = [f"- SALMon: pair = 1 if the positive (sample_i_0) scores higher than the negative (sample_i_1), 0.5 on "
             f"a tie, mean over the part's pairs; utterance score: {score}; softmax support {p.get('support', 'n/a')}. "
             f"Source: {s.get('source') or 'none'}" + (f" ({s['note']})" if s.get("note") else "") + "."]
    pa = p.get("prosaudit") or {}
    lines.append("- ProsAudit: official ZeroSpeech scoring (ties 0.5, mean over voices per (type, id), then per "
                 "type), utterance score as sWUGGY/sBLIMP; " + (f"{pa['pairs']} pairs." if pa.get("pairs")
                                                                else (pa.get("note") or "not measured."))
                 + (f" ({pa['note']})" if pa.get("pairs") and pa.get("note") else ""))
    if p.get("continuation_only"):
        lines.append("- sSC / tSC continuation only: the ending's units and EOS scored given the whole shared story "
                     "(context = the longest common unit prefix of the two versions), same eval.score reduction "
                     "(arXiv 2601.06329); reported beside the whole-story numbers, which stay the headline.")
    lines.append(multispeaker.protocol_line(results))
    lines.append(protocol_line(p))
    return lines
