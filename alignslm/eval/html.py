"""``report/index.html``: one page to read and listen to, self-contained and offline.

The page holds the verdict, the report's markdown blocks (headline and comparison tables, calibration, ...)
rendered as HTML, the plots, and for the first ``n_examples`` held-out prompts the prompt audio and, for each
of its first ``listen_k`` continuation indices k (``eval.listen_k``; those that exist), every model's
continuation with that k (so the same sampling seed) side by side, with the transcript and the judge's value.

Everything is inside the one file: plots and audio are base64 ``data:`` URIs, the CSS is inline and there
is no script.  The page works when it alone is mailed or copied, with no network and no file next to it;
the price is size (a 16 kHz 16-bit WAV is 32 KB per second, 43 KB in base64), which the report stage's
summary records.  All text from the run (transcripts, ids, markdown cells) goes through ``html.escape``.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from alignslm import logger
from alignslm.rundir import read_jsonl, write_text

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;
padding:1em 1.5em;color:#1b1b1b;background:#fff}
h1{font-size:1.6em;margin:.2em 0 .5em}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.verdict{font-size:1.12em;background:#f3f6fb;border-left:5px solid #3a6ea5;padding:.7em 1em;
margin:.5em 0 1em}
.note{color:#555;font-size:.92em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #d4d4d4;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#f4f4f4}tr:nth-child(even) td{background:#fafafa}
code{background:#f2f2f2;padding:0 .2em;border-radius:3px}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.4em 0}
.prompt{border:1px solid #d8d8d8;border-radius:6px;padding:.8em 1em;margin:1em 0}
.prompt h3{margin:.1em 0 .4em;font-size:1.02em}
.models{display:grid;grid-template-columns:repeat(auto-fit,minmax(240px,1fr));gap:.8em;margin-top:.6em}
.model{background:#fafafa;border:1px solid #e2e2e2;border-radius:5px;padding:.5em .7em}
.model h4{margin:0 0 .3em}.model.rejected{background:#fff6f4;border-color:#f0c8bf}
.k{margin-top:.7em}.khead{font-weight:600;font-size:.95em}
audio{width:100%;height:2.2em;margin:.2em 0}
.text{font-style:italic}.value{font-size:.9em;color:#333}.missing{color:#a33}
"""


# --------------------------------------------------------------------------------------------------
# The report's markdown, as HTML (the subset the report writes: pipe tables, "- " lists, paragraphs,
# **bold**, `code`, ![alt](file))
# --------------------------------------------------------------------------------------------------


def _inline(text: str) -> str:
    s = html.escape(text, quote=True)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", s)


def _cells(line: str) -> list[str]:
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body)]


def _table(lines: Sequence[str]) -> str:
    head, rows = _cells(lines[0]), [_cells(x) for x in lines[2:]]
    cells = "".join(f"<th>{_inline(c)}</th>" for c in head)
    out = [f"<table><thead><tr>{cells}</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows]
    return "\n".join(out) + "\n</tbody></table>"


def markdown_to_html(md: str) -> str:
    """The report's markdown blocks as HTML; every piece of text is escaped."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.lstrip().startswith("|"):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out.append(_table(lines[i:j]))
            i = j
        elif line.startswith("- "):
            items = []
            while i < len(lines) and (lines[i].startswith("- ") or lines[i].startswith("  ")):
                if lines[i].startswith("- "):
                    items.append(lines[i][2:])
                else:
                    items[-1] += " " + lines[i].strip()
                i += 1
            out.append("<ul>" + "".join(f"<li>{_inline(t)}</li>" for t in items) + "</ul>")
        else:
            j = i
            while j < len(lines) and lines[j].strip() and not lines[j].lstrip().startswith(("|", "- ")):
                j += 1
            out.append(f"<p>{_inline(' '.join(x.strip() for x in lines[i:j]))}</p>")
            i = j
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Audio and images as data: URIs
# --------------------------------------------------------------------------------------------------


def data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _wav_file(path: str | None, roots: Sequence[Path]) -> Path | None:
    """The WAV a generations row names (relative to the evaluate or the run directory, or absolute)."""
    if not path:
        return None
    for root in roots:
        p = root / path  # an absolute path stays itself
        if p.is_file():
            with open(p, "rb") as f:
                if f.read(4) == b"RIFF":
                    return p
    return None


def _audio(path: Path | None, what: str, missing: str | None) -> str:
    if path is None:
        return f'<div class="missing">{html.escape(missing or "no audio")}</div>'
    return (f'<audio controls preload="metadata" title="{html.escape(what)}" '
            f'src="{data_uri(path, "audio/wav")}"></audio>')


# --------------------------------------------------------------------------------------------------
# Which continuations to play
# --------------------------------------------------------------------------------------------------


def listening_sample(models: Sequence[str], eval_dir: Path, run_dir: Path, n_prompts: int,
                     max_k: int = 3) -> list[dict]:
    """The first ``n_prompts`` held-out prompts in the first model's (the base's) ``generations.jsonl`` (the
    evaluate stage's order: the same prompts as the markdown report's examples), each with its first ``max_k``
    continuation indices k that any model has (0 = every one), and for each k the continuation with that k by
    every model that has generations (a model evaluated on the benchmarks only has none); a row absent from
    a model's file is None.  Each entry: prompt_id, prompt_text, prompt_wav, ks = [{k, models}]."""
    gens = {}
    for m in models:
        f = eval_dir / m / "generations.jsonl"
        if f.is_file():
            gens[m] = {(str(r["prompt_id"]), r.get("k")): r for r in read_jsonl(f)}
    if not gens or n_prompts <= 0:
        return []
    first = next(iter(gens.values()))
    ids = list(dict.fromkeys(pid for pid, _ in first))[:n_prompts]
    roots = (eval_dir, run_dir)
    out = []
    for pid in ids:
        ks = sorted({k for g in gens.values() for p, k in g if p == pid and isinstance(k, int)})
        ks = ks[:max_k] if max_k > 0 else ks
        entry: dict = {"prompt_id": pid, "ks": []}
        for k in ks:
            rows = {m: g.get((pid, k)) for m, g in gens.items()}
            entry["ks"].append({"k": k, "models": {m: (None if r is None else {**r, "wav": _wav_file(r.get("path"),
                                                                                                   roots)})
                                                   for m, r in rows.items()}})
        any_row = next(r for g in gens.values() for (p, _), r in g.items() if p == pid)
        entry.update(prompt_text=any_row.get("prompt_text"), prompt_wav=_wav_file(any_row.get("prompt_path"), roots))
        out.append(entry)
    return out


def _value(row: Mapping, metric: str) -> str:
    labels = {"sense": "signal", "perplexity": "judge perplexity", "score": "judge score"}
    parts = []
    for key in dict.fromkeys((metric, "sense", "score", "perplexity")):
        v = row.get(key)
        if isinstance(v, (int, float)):
            parts.append(f"{labels[key]} {v:.3f}" if key != "perplexity" else f"{labels[key]} {v:.0f}")
    return "; ".join(parts) or "no judge value"


def _prompt_html(p: Mapping, metric: str, label: Callable[[str], str]) -> str:
    out = [f'<div class="prompt"><h3>Prompt <code>{html.escape(p["prompt_id"])}</code></h3>',
           _audio(p["prompt_wav"], "prompt", "prompt audio not found"),
           f'<div class="text">{html.escape(p.get("prompt_text") or "")}</div>']
    for kk in p["ks"]:
        out.append(_k_html(kk, metric, label))
    out.append("</div>")
    return "\n".join(out)


def _k_html(kk: Mapping, metric: str, label: Callable[[str], str]) -> str:
    """One continuation index of a prompt: every model's continuation with that k, side by side."""
    seeds = {r.get("seed") for r in kk["models"].values() if r is not None}
    seed_txt = f"seed {seeds.pop()}" if len(seeds) == 1 else "seeds differ between models"
    out = [f'<div class="k"><div class="khead">k = {kk["k"]} <span class="note">({html.escape(seed_txt)})</span>'
           '</div><div class="models">']
    for m, r in kk["models"].items():
        if r is None:
            out.append(f'<div class="model"><h4>{html.escape(label(m))}</h4>'
                       '<div class="missing">no continuation with this k</div></div>')
            continue
        rej = r.get("reject")
        out += [f'<div class="model{" rejected" if rej else ""}"><h4>{html.escape(label(m))}</h4>',
                _audio(r["wav"], f"{label(m)} continuation k={kk['k']}", "continuation audio not found"),
                f'<div class="text">{html.escape(r.get("text") or "(no transcript)")}</div>',
                f'<div class="value">{html.escape(_value(r, metric))}'
                + (f'<br>rejected: {html.escape(str(rej))}' if rej else "") + "</div></div>"]
    out.append("</div></div>")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------


def build_page(verdict: str, sections: Sequence[tuple[str, str]], plots: Mapping[str, Path],
               listen: Sequence[Mapping], metric: str, label: Callable[[str], str],
               note: str | None = None) -> str:
    """The page as a string.  ``sections``: (title, markdown) in order; the listening section goes after the
    second one (the headline and comparison tables), the plots at the end; ``label``: model name -> label."""
    body = ["<h1>alignslm report</h1>",
            f'<div class="verdict"><strong>Verdict:</strong> {_inline(verdict)}</div>']
    if note:
        body.append(f'<p class="note">{_inline(note)}</p>')
    n_k = max((len(p["ks"]) for p in listen), default=0)
    listen_html = ["<h2>Listen: the same held-out prompts, every model</h2>",
                   f'<p class="note">The first {len(listen)} held-out prompts of the evaluation '
                   f"(eval.n_examples), each with up to {n_k} continuation indices k (eval.listen_k): the prompt, "
                   "then for each k every model's continuation with that k and sampling seed side by side, its "
                   "Whisper transcript and the judge's values (a rejected continuation says why).</p>"]
    listen_html += [_prompt_html(p, metric, label) for p in listen]
    if not listen:
        listen_html.append("<p>No held-out generations found.</p>")
    for i, (title, md) in enumerate(sections):
        body += [f"<h2>{html.escape(title)}</h2>", markdown_to_html(md)]
        if i == 1:
            body += listen_html
    if len(sections) < 2:
        body += listen_html
    if plots:
        body.append("<h2>Plots</h2>")
        for k, p in plots.items():
            body.append(f'<img alt="{html.escape(k)}" src="{data_uri(p, "image/png")}">')
    body.append('<p class="note">Written by the alignslm report stage from evaluate/results.json; '
                "plots and audio are embedded, the page needs no network and no other file.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>alignslm report</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def write_index(path: Path, results: Mapping, run_dir: Path, sections: Sequence[tuple[str, str]],
                plots: Mapping[str, Path], n_examples: int, metric: str, label: Callable[[str], str],
                verdict: str, note: str | None = None, listen_k: int = 3) -> dict[str, Any]:
    """Write ``index.html``; returns its size and the clips it holds (for the stage's summary)."""
    listen = listening_sample(list(results["models"]), run_dir / "evaluate", run_dir, n_examples, listen_k)
    page = build_page(verdict, sections, plots, listen, metric, label, note)
    write_text(path, page)
    rows = [r for p in listen for kk in p["ks"] for r in kk["models"].values()]
    clips = sum(p["prompt_wav"] is not None for p in listen) + sum(r is not None and r["wav"] is not None
                                                                  for r in rows)
    missing = sum(p["prompt_wav"] is None for p in listen) + sum(r is None or r["wav"] is None for r in rows)
    if missing:
        logger.warning("report: %d clip(s) of the listening sample were not found (index.html says which)",
                       missing)
    return {"bytes": len(page.encode("utf-8")), "prompts": len(listen),
            "k_rows": sum(len(p["ks"]) for p in listen), "clips": clips, "clips_missing": missing}
