"""Your corpus in, the manifest out: ``python -m alignslm.data librispeech|mls|folder <root> <out.jsonl>``.

The manifest (``corpus.manifest``) has one JSON row per utterance: ``utt_id``, ``path`` (absolute),
``text``, ``speaker``, ``duration`` (s) and, when an alignment is given, ``words`` [{word, start, end}] (s).

Layouts read:
- ``librispeech``: ``<root>/.../<spk>/<chapter>/<spk>-<chapter>-<n>.flac`` + ``<spk>-<chapter>.trans.txt``
  (``<utt_id> <TEXT>`` per line), e.g. ``LibriSpeech/train-clean-100``.
- ``mls`` (Multilingual LibriSpeech): ``<root>/transcripts.txt`` (``<utt_id>\\t<text>``) +
  ``<root>/audio/<spk>/<book>/<utt_id>.flac`` (or ``.opus``), e.g. ``mls_english/train``.
- ``folder``: every ``*.wav`` / ``*.flac`` under ``<root>`` with its transcript in a ``.txt`` or ``.lab`` file
  of the same name (none: ``text`` is ""); the speaker is the parent directory's name.

``--alignments DIR``: word times in the LibriSpeech alignment format of CorentinJ/librispeech-alignments
(``<spk>-<chapter>.alignment.txt``: ``<utt_id> ",WORD,WORD," "end,end,end"``, "" = silence), or Montreal
Forced Aligner TextGrids (``<utt_id>.TextGrid`` with a ``words`` tier).  With word times the sample stage
cuts each prompt at the last word end before ``sample.prompt_seconds``; without them it cuts on a unit
boundary, and the prompt's text is what the ASR hears in the cut prompt (the transcribe stage).
The command prints which of the two the manifest gives.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from alignslm.rundir import write_jsonl

AUDIO = (".wav", ".flac", ".opus", ".ogg", ".mp3")


class DataError(ValueError):
    """The corpus directory is not in the layout named; the message says what was expected."""


def _duration(path: Path) -> float | None:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError):
        return None
    return round(info.frames / info.samplerate, 3)


def librispeech_rows(root: Path) -> Iterator[dict]:
    trans = sorted(root.rglob("*.trans.txt"))
    if not trans:
        raise DataError(f"{root}: no <spk>-<chapter>.trans.txt files below it; point at e.g. "
                        "LibriSpeech/train-clean-100")
    for t in trans:
        for line in t.read_text().splitlines():
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            audio = next((t.parent / f"{utt}{ext}" for ext in AUDIO if (t.parent / f"{utt}{ext}").is_file()), None)
            yield {"utt_id": utt, "path": audio, "text": text.strip().lower(), "speaker": utt.split("-")[0]}


def mls_rows(root: Path) -> Iterator[dict]:
    tr = root / "transcripts.txt"
    if not tr.is_file():
        raise DataError(f"{tr} not found; point at one MLS split (e.g. mls_english/train) holding transcripts.txt "
                        "and audio/")
    for line in tr.read_text().splitlines():
        if not line.strip():
            continue
        utt, _, text = line.partition("\t")
        spk, book = utt.split("_")[:2]
        d = root / "audio" / spk / book
        audio = next((d / f"{utt}{ext}" for ext in AUDIO if (d / f"{utt}{ext}").is_file()), None)
        yield {"utt_id": utt, "path": audio, "text": text.strip(), "speaker": spk}


def folder_rows(root: Path) -> Iterator[dict]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO and p.is_file())
    if not files:
        raise DataError(f"{root}: no audio files ({', '.join(AUDIO)}) below it")
    for p in files:
        side = next((p.with_suffix(s) for s in (".txt", ".lab") if p.with_suffix(s).is_file()), None)
        utt = str(p.relative_to(root).with_suffix("")).replace("/", "__")
        yield {"utt_id": utt, "path": p, "text": side.read_text().strip() if side else "", "speaker": p.parent.name}


LAYOUTS = {"librispeech": librispeech_rows, "mls": mls_rows, "folder": folder_rows}


# --------------------------------------------------------------------------------------------------
# Word alignments
# --------------------------------------------------------------------------------------------------


def read_alignments(root: Path) -> dict[str, list[dict]]:
    """utt_id -> [{word, start, end}] from every alignment file below ``root`` (see the module docstring)."""
    out: dict[str, list[dict]] = {}
    for f in sorted(root.rglob("*.alignment.txt")):
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue
            words = parts[1].strip('"').split(",")
            ends = [float(x) for x in parts[2].strip('"').split(",")]
            start, ws = 0.0, []
            for w, e in zip(words, ends):
                if w:
                    ws.append({"word": w.lower(), "start": round(start, 3), "end": round(e, 3)})
                start = e
            out[parts[0]] = ws
    for f in sorted(root.rglob("*.TextGrid")):
        out[f.stem] = _textgrid_words(f)
    return out


_INTERVAL = re.compile(r'xmin = ([\d.]+)\s+xmax = ([\d.]+)\s+text = "(.*?)"')


def _textgrid_words(path: Path) -> list[dict]:
    """The ``words`` tier of a Praat TextGrid (long format, as the Montreal Forced Aligner writes it)."""
    text = path.read_text()
    tiers = re.split(r'name = "', text)[1:]
    tier = next((t for t in tiers if t.startswith("words")), None)
    if tier is None:
        raise DataError(f"{path}: no 'words' tier")
    return [{"word": w.lower(), "start": float(a), "end": float(b)} for a, b, w in _INTERVAL.findall(tier) if w]


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def build_manifest(layout: str, root: str | Path, out: str | Path, alignments: str | Path | None = None,
                   limit: int | None = None) -> dict:
    """Write the manifest; return a report (counts, what was skipped and why, where prompt text comes from)."""
    if layout not in LAYOUTS:
        raise DataError(f"layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    words = read_alignments(Path(alignments).expanduser()) if alignments else {}
    rows, skipped = [], {"no audio file": [], "unreadable audio": []}
    for r in LAYOUTS[layout](root):
        if limit is not None and len(rows) >= limit:
            break
        if r["path"] is None:
            skipped["no audio file"].append(r["utt_id"])
            continue
        dur = _duration(r["path"])
        if dur is None:
            skipped["unreadable audio"].append(r["utt_id"])
            continue
        row = {**r, "path": str(r["path"]), "duration": dur}
        if r["utt_id"] in words:
            row["words"] = words[r["utt_id"]]
        rows.append(row)
    if not rows:
        raise DataError(f"{root}: no usable utterance ({', '.join(f'{k}: {len(v)}' for k, v in skipped.items())})")
    write_jsonl(out, rows)
    aligned = sum("words" in r for r in rows)
    return {"utterances": len(rows), "hours": round(sum(r["duration"] for r in rows) / 3600, 3),
            "speakers": len({r["speaker"] for r in rows}), "with_word_times": aligned,
            "skipped": {k: len(v) for k, v in skipped.items() if v},
            "skipped_examples": {k: v[:5] for k, v in skipped.items() if v},
            "prompt_cut": ("at the last word end (word times)" if aligned == len(rows) else
                           "on a unit boundary; the prompt text is the ASR transcript of the cut prompt"
                           + (f" ({len(rows) - aligned} of {len(rows)} utterances have no word times)"
                              if aligned else " (no alignment given: --alignments DIR)"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alignslm.data", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layout", choices=sorted(LAYOUTS))
    p.add_argument("root", help="corpus directory")
    p.add_argument("out", help="manifest to write (JSONL); use it as corpus.manifest")
    p.add_argument("--alignments", help="directory of word alignments (*.alignment.txt or *.TextGrid)")
    p.add_argument("--limit", type=int, help="at most this many utterances")
    args = p.parse_args(argv)
    try:
        rep = build_manifest(args.layout, args.root, args.out, args.alignments, args.limit)
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {rep['utterances']} utterances, {rep['hours']} h, {rep['speakers']} speakers")
    for k, n in rep["skipped"].items():
        print(f"  skipped ({k}): {n}, e.g. {', '.join(rep['skipped_examples'][k])}")
    print(f"  word times: {rep['with_word_times']} of {rep['utterances']}; prompts are cut {rep['prompt_cut']}")
    print(f"  next: python -m alignslm.run --config configs/twist-1.3b-librispeech.yaml corpus.manifest={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
