"""Stage ``benchmarks``: the data the evaluation scores.

* ``benchmarks.root`` set: the real ZeroSpeech 2021 (lexical, syntactic) and Spoken StoryCloze (sSC,
  tSC) layouts are checked with alignslm.eval.benchdata (every pair complete, every file present);
  ``benchmarks.json`` = {"root": root}; the demo's root is ``data`` (relative to this directory).
* otherwise: the demo mini benchmarks are written under ``data/`` in the same layouts
  (alignslm.demo.benchmarks) and read back through the same loaders.

Files rejected by the loaders (not 16 kHz mono, empty) are listed in ``rejects.jsonl``.

SALMon, ProsAudit and the multi-speaker StoryCloze (alignslm.eval.suites): ``benchmarks.salmon_root`` /
``benchmarks.prosaudit_root`` / ``benchmarks.multispeaker_root`` when set; otherwise the demo writes a mini
SALMon under ``data/salmon`` (alignslm.demo.salmon), the lexical part of a mini ProsAudit under
``data/prosaudit`` (alignslm.demo.prosaudit) and a multi-speaker sSC/tSC under ``data/multispeaker``
(alignslm.demo.multispeaker); ``benchmarks.json`` records where each is (``salmon``, ``prosaudit``,
``multispeaker``: root, source, note) and the summary what they cost (``salmon_s``, ``prosaudit_s``,
``multispeaker_s``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from alignslm.eval.benchdata import check_layout, load_all
from alignslm.eval.suites import check as check_suites
from alignslm.eval.suites import prepare as prepare_suites
from alignslm.rundir import StageContext, relative_path, write_json


def run(ctx: StageContext) -> dict:
    b = ctx.cfg.benchmarks
    t0 = time.time()
    if b.root:
        root = Path(b.root).expanduser().resolve()
        source = "real"
    else:
        from alignslm.demo.benchmarks import write_demo_benchmarks

        root = ctx.out / "data"
        write_demo_benchmarks(root, n_pairs=b.n_pairs, seed=ctx.cfg.run.seed, voices=list(b.voices),
                              rate=b.rate, story_voice=b.story_voice, n_topics=b.n_topics,
                              cache_dir=ctx.cfg.run.cache_dir, workers=min(2, os.cpu_count() or 1),
                              split=b.split)
        source = "demo"
    sets = load_all(root, b.split)
    summary: dict = {"source": source, "seconds": round(time.time() - t0, 2)}
    suites = prepare_suites(b, ctx.out, source == "demo", ctx.cfg.run.seed, ctx.cfg.run.cache_dir,
                            min(2, os.cpu_count() or 1))
    summary["salmon_parts"] = len(suites["salmon"].get("parts") or {})
    summary["salmon_s"] = suites["salmon"].get("seconds", 0.0)  # the demo SALMon: synthesis + mixing + writing
    summary["prosaudit_pairs"] = suites["prosaudit"].get("pairs", 0)
    summary["prosaudit_s"] = suites["prosaudit"].get("seconds", 0.0)
    summary["multispeaker_pairs"] = sum((suites["multispeaker"].get("pairs") or {}).values())
    summary["multispeaker_s"] = suites["multispeaker"].get("seconds", 0.0)  # the demo set: synthesis + joining
    for name, bs in sets.items():
        for fid, reason in bs.rejects:
            ctx.rejects.add(f"{name}/{fid}", f"bad audio: {reason}")
        summary[f"{name}_pairs"] = len(bs.pairs)
        summary[f"{name}_files"] = len(bs.items)
    write_json(ctx.out / "benchmarks.json", {"root": relative_path(root, ctx.out), "split": b.split, "source": source,
                                             "sets": {k: v.summary() for k, v in sets.items()}, **suites})
    return summary


def check(cfg) -> list[str]:  # noqa: ANN001 - Config
    """--dry-run: the real layout is complete (no audio read), or the demo's speech engine imports."""
    b = cfg.benchmarks
    problems = check_suites(b)
    if b.root:  # a root that does not exist: alignslm.run.check_paths says so once, from the stage graph
        present = Path(b.root).expanduser().exists()
        return [f"benchmarks.root: {p}" for p in check_layout(b.root, b.split) if present] + problems
    if problems:
        return problems
    try:
        import espeakng_loader  # noqa: F401
    except ImportError:
        return ["the demo benchmarks need espeakng-loader: pip install 'alignslm[demo]'"]
    return []
