"""The report's per-model tables: one row per model of ``results.json``, one cell per column.

Every suite's table (the headline metrics, SALMon, ProsAudit, continuation-only and multi-speaker StoryCloze)
is a list of :class:`Column`\\ s given to :func:`model_table`; the number formats live here once.

    model_table(results["models"], [Column("sWUGGY", bench("lexical"))], label=model_label)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Cell = Callable[[Mapping], str]  # a model's entry of results.json -> the cell's text


@dataclass(frozen=True)
class Column:
    header: str
    cell: Cell
    rule: str = "---"  # the column's alignment row


def model_table(models: Mapping[str, Mapping], columns: Sequence[Column],
                label: Callable[[str], str] = str) -> list[str]:
    """Markdown lines: the header, the rule and one row per model (in ``models``' order)."""
    lines = ["| model | " + " | ".join(c.header for c in columns) + " |",
             "|---|" + "".join(f"{c.rule}|" for c in columns)]
    for name, m in models.items():
        lines.append(f"| {label(name)} | " + " | ".join(c.cell(m) for c in columns) + " |")
    return lines


def pct(x: Any) -> str:
    """A fraction as a percentage with one decimal; ``n/a`` for None or NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.1f}"


def num(x: Any, fmt: str = "{:.2f}") -> str:
    """A number in ``fmt``; ``n/a`` for None or NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def ci(d: Mapping | None, fmt: str = "{:.2f}") -> str:
    """``mean [lo, hi]`` (or ``diff [lo, hi]``) of a bootstrap summary; ``n/a`` when it has no value."""
    if not d or d.get("mean", d.get("diff")) is None:
        return "n/a"
    v = d.get("mean", d.get("diff"))
    if d.get("lo") is None:
        return num(v, fmt)
    return f"{fmt.format(v)} [{fmt.format(d['lo'])}, {fmt.format(d['hi'])}]"


def benchmark(m: Mapping, key: str) -> Mapping:
    """A model's result for one benchmark key (``{}`` when it was not measured)."""
    return (m.get("benchmarks") or {}).get(key) or {}


def bench(key: str, field: str = "all") -> Cell:
    """The cell of one benchmark's accuracy (``field`` of ``benchmarks[key]``) in %."""
    return lambda m: pct(benchmark(m, key).get(field))


def first_benchmarks(models: Mapping[str, Mapping]) -> Mapping:
    """The first model's benchmark results (the footnotes' pair and tie counts are the same for every model)."""
    return next(iter(models.values()), {}).get("benchmarks") or {}
