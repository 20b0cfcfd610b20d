"""ProsAudit (de Seyssel et al., Interspeech 2023; ZeroSpeech's prosody benchmark) through the ZeroSpeech
machinery: the released layout, the submission the official tool reads, and its scoring rule.

What the official code (PyPI ``zerospeech-benchmarks`` 0.9.4: ``zerospeech.tasks.lm.prosody.ProsodicTask``,
``zerospeech.submissions.prosAudit``) does, and we do the same way:

* Layout: ``<root>/english/{dev,test}/*.wav`` + ``gold.csv`` (``benchmarks.prosaudit_root`` may point at the
  ``prosaudit`` folder, at its ``english`` folder, or at a folder holding ``dev``/``test``; names in any case).
  ``gold.csv`` columns: ``filename, correct, id, voice, type, subtype, transcription`` (the official code
  drops or renames each of them, so each must exist); ``type`` is ``protosyntax`` (a pause at a strong
  prosodic boundary vs at a weak one) or ``lexical`` (a pause between words vs inside a word).
* Pairing as sBLIMP's: the k-th ``correct == 1`` row with the k-th ``correct == 0`` row (we also check that
  both carry the same id and voice, which the official code assumes): alignslm.eval.benchdata's pairing, reused.
* Rule: a pair scores 1 if s(correct) > s(incorrect), 0.5 on a tie, 0 otherwise; pairs are averaged over
  voices within ``(type, id)`` (``prosodic_by_pair``), then per type: n, mean and sample std
  (``prosodic_by_type``).  The leaderboard reports ``protosyntax`` and ``lexical`` separately; ``all`` here is
  the mean over every (type, id) (ours, for the seeds merge and the round comparisons).
* Submission: ``<sub>/english_<split>.txt``, one ``<filename> <score>`` line per wav of the split, higher =
  more probable (utterance scores as for sWUGGY/sBLIMP: ``eval.score`` over ``[BOS, units, EOS]``).  A file
  the loader rejected gets the pair-losing score, as in alignslm.eval.scoring (the official number is then a
  lower bound).

The demo builds the lexical part only (alignslm.demo.prosaudit: one eSpeak sentence, the same silence
inserted between two words or inside a word).  Not the protosyntax part: eSpeak marks a strong prosodic
boundary only at punctuation, where it also pauses, so a strong boundary without a pause would need eSpeak's
own silence cut out, and the pair would differ by a splice cue (an edit at a silent junction vs a cut through
voiced speech) that an LM can use without knowing anything about prosody.  The real set has both parts.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alignslm.eval.benchdata import SYNTACTIC_COLUMNS, BenchmarkError, BenchmarkSet, check_wav, find_subdir
from alignslm.eval.scoring import losing_scores, pair_score
from alignslm.eval.tables import Column, bench, model_table
from alignslm.rundir import write_text

NAME = "prosaudit"
TYPES = ("protosyntax", "lexical")


def find_prosaudit_dir(root: str | Path, split: str) -> Path:
    """``<root>[/english]/<split>`` (names in any case)."""
    root = Path(root).expanduser()
    for base in (find_subdir(root, "english"), find_subdir(find_subdir(root, "prosaudit") or root, "english"), root):
        d = find_subdir(base, split) if base is not None else None
        if d is not None:
            return d
    raise BenchmarkError(root / "english" / split, [f"no english/{split} (or {split}) directory under {root}"],
                         "Unpack the ProsAudit data set (zrc datasets:pull prosaudit-dataset) and point "
                         "benchmarks.prosaudit_root at it, or leave it unset.")


def load_prosaudit(root: str | Path, split: str = "dev", check_audio: bool = True) -> BenchmarkSet:
    """ProsAudit pairs of ``split``, paired as the official scorer does (see the module docstring)."""
    from alignslm.eval.benchdata import _check_sides, _pairs_by_order, _read_gold  # the sBLIMP rules, shared

    if split not in ("dev", "test"):
        raise ValueError(f"split must be 'dev' or 'test', got {split!r}")
    d = find_prosaudit_dir(root, split)
    rows = _read_gold(d / "gold.csv", SYNTACTIC_COLUMNS)
    missing = [f"{r['filename']}.wav (gold.csv row {i + 2}) does not exist"
               for i, r in enumerate(rows) if not (d / f"{r['filename']}.wav").is_file()]
    if missing:
        raise BenchmarkError(d, missing, "Every gold.csv row needs its <filename>.wav next to gold.csv.")
    unknown = sorted({r["type"] for r in rows} - set(TYPES))
    if unknown:
        raise BenchmarkError(d / "gold.csv", [f"type {t!r} is neither protosyntax nor lexical" for t in unknown])
    _check_sides(d, rows)
    pairs = _pairs_by_order(d, [r for r in rows if r["correct"] == "1"], [r for r in rows if r["correct"] == "0"])
    items = [(r["filename"], str((d / f"{r['filename']}.wav").resolve())) for r in rows]
    bs = BenchmarkSet(NAME, split, d.resolve(), items, pairs)
    if check_audio:
        reasons = {fid: check_wav(p) for fid, p in items}
        bad = {fid: why for fid, why in reasons.items() if why}
        bs.rejects = sorted(bad.items())
        bs.dropped = [p for p in pairs if p["correct_file"] in bad or p["incorrect_file"] in bad]
        bs.pairs = [p for p in pairs if p not in bs.dropped]
    return bs


def score_prosaudit(pairs: Sequence[Mapping], scores: Mapping[str, float]) -> dict:
    """The official numbers: per (type, id) the mean over voices; per type n, mean, sample std; ``all`` = the
    mean over every (type, id)."""
    groups: OrderedDict[tuple, list[float]] = OrderedDict()
    for p in pairs:
        s = pair_score(scores[p["correct_file"]], scores[p["incorrect_file"]])
        groups.setdefault((str(p["type"]), str(p["id"])), []).append(s)
    by_pair = [{"type": t, "id": i, "score": float(np.mean(v))} for (t, i), v in groups.items()]
    per_type: dict[str, list[float]] = defaultdict(list)
    for r in by_pair:
        per_type[r["type"]].append(r["score"])
    by_type = {t: {"n": len(v), "score": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None}
               for t, v in sorted(per_type.items())}
    return {"all": float(np.mean([r["score"] for r in by_pair])) if by_pair else None, "by_type": by_type,
            **{t: by_type[t]["score"] for t in TYPES if t in by_type},
            "n_ids": len(by_pair), "n_pairs": len(pairs), "by_pair": by_pair}


def write_prosaudit_submission(sub_dir: str | Path, split: str, items: Sequence[tuple[str, Any]],
                               scores: Mapping[str, float], dropped: Sequence[Mapping] = (),
                               rejects: Sequence[tuple[str, str]] = ()) -> Path:
    """``<sub>/english_<split>.txt``: every wav of the split once (scores written with repr, round-trip
    exact); files of dropped pairs get the pair-losing score (alignslm.eval.scoring.LOSING_SCORE)."""
    filled = losing_scores(dropped, scores, rejects)
    lines, seen = [], set()
    for fid in [str(f) for f, _ in items] + [str(p[f"{s}_file"]) for p in dropped for s in ("correct", "incorrect")]:
        if fid in seen:
            continue
        seen.add(fid)
        s = scores[fid] if fid in scores else filled[fid]["score"]
        lines.append(f"{fid} {float(s)!r}")
    path = Path(sub_dir) / f"english_{split}.txt"
    write_text(path, "\n".join(lines) + "\n")
    return path


def score(lm: Any, units: Mapping[str, Sequence[int]], bset: BenchmarkSet, mode: str, batch_size: int,
          submission_dir: Path | None = None) -> dict:
    """Utterance scores (alignslm.eval.scoring.score_units), the official numbers, and the submission file."""
    import time

    from alignslm.eval.scoring import score_units

    t0 = time.perf_counter()
    scores = score_units(lm, units, mode, batch_size)
    res = score_prosaudit(bset.pairs, scores)
    if submission_dir is not None:
        write_prosaudit_submission(submission_dir, bset.split, bset.items, scores, bset.dropped, bset.rejects)
        filled = losing_scores(bset.dropped, scores, bset.rejects)
        res["submission_filled"] = [{**f, "score": repr(f["score"])} for f in filled.values()]
    res.update(scores=scores, seconds=round(time.perf_counter() - t0, 3), n_utterances=len(scores))
    return res


def report_table(results: Mapping, label: Any = str) -> str:
    """Markdown: ProsAudit protosyntax / lexical per model, or why it was not measured."""
    models = results.get("models", {})
    info = results.get("prosaudit") or {}
    if not any(NAME in (m.get("benchmarks") or {}) for m in models.values()):
        return (info.get("note") or "Not measured (set benchmarks.prosaudit_root to the ProsAudit data set).") + "\n"
    cols = [Column(t, bench(NAME, t)) for t in TYPES] + [Column("all (mean over type, id)", bench(NAME))]
    lines = model_table(models, cols, label)
    lines += ["", "Accuracy in % (official ProsAudit scoring: ties count half, mean over voices per (type, id), then "
              f"per type); split {info.get('split', 'n/a')}; submissions in evaluate/submissions/<model>/prosaudit/."
              + (f" Source: {info['note']}." if info.get("note") else "")]
    return "\n".join(lines) + "\n"
