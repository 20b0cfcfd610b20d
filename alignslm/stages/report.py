"""The report stage: ``report/report.md``, ``report/headline.md`` (printed by the CLI at the end),
``report/results.json``, PNG plots and ``report/index.html`` (one offline page with the audio), from
``evaluate/results.json`` and the round directories (``round-N/judge/judgments.jsonl``,
``round-N/train/train_log.jsonl``).  See alignslm.eval.report and alignslm.eval.html.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignslm.eval.report import build_report
from alignslm.rundir import StageContext, read_json

if TYPE_CHECKING:
    from alignslm.config import Config


def check(cfg: Config) -> list[str]:
    return [f"eval.{k} must be >= 0" for k in ("n_examples", "listen_k") if getattr(cfg.eval, k) < 0]


def run(ctx: StageContext) -> dict:
    src = ctx.inputs["evaluate"] / "results.json"
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found: run the evaluate stage first "
                                "(python -m alignslm.run --stage evaluate)")
    results = read_json(src)
    rounds = sum(1 for k in ctx.inputs if k.startswith("train_"))
    demo = bool(results.get("demo", ctx.cfg.benchmarks.root is None))
    return build_report(results, ctx.run_dir, ctx.out, rounds, ctx.cfg.eval.n_examples, demo=demo,
                        listen_k=ctx.cfg.eval.listen_k)
