"""tSC: does the demo unit LM use the story? And could it copy the story's words at the unit level?

    python experiments/tsc_context.py RUN_DIR [UNITLM_DIR]

1. Context gain: for every sSC/tSC pair of the demo benchmarks, the last sentence's share of the units
   (estimated by its share of the text) is scored after the whole story (conditional) and alone after BOS
   (unconditional).  If the LM uses the story, the coherent ending's gain (conditional - unconditional,
   a PMI) beats the other ending's more often than not.  Printed: pair accuracy of the mean score, of the
   ending's conditional log-prob, of its unconditional one, and of the PMI.
2. Copyability: in the corpus, the units of a story's object noun where it is introduced and where the
   ending repeats it, against the same noun (same voice) in another story and against a random word
   (difflib ratio, share of shared unit trigrams).  Needs the manifest's word times.
"""

from __future__ import annotations

import difflib
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def context_gain(run: Path, lm_dir: Path) -> None:
    from alignslm.eval.benchdata import load_all
    from alignslm.eval.scoring import tokenize_items
    from alignslm.lm.unitlm import load_unitlm
    from alignslm.speech.tokenizer import load_tokenizer

    root = run / "benchmarks" / json.loads((run / "benchmarks/benchmarks.json").read_text())["root"]
    texts = {(r["benchmark"], r["file"]): r["text"] for r in map(json.loads, open(root / "texts.jsonl"))}
    benches = load_all(root, "dev")
    tok = load_tokenizer(run / "tokenize")
    lm = load_unitlm(lm_dir, support="units", device="cpu", dtype="float32")

    def token_logprobs(units: list[int]) -> np.ndarray:
        ids = torch.tensor([[lm.bos_id, *lm.units_to_ids(units)]])
        with torch.no_grad():
            logits = lm.model(ids).logits.float()
        return lm.token_logprobs(logits[:, :-1], ids[:, 1:])[0].numpy()

    for name in ("tsc", "ssc"):
        b = benches[name]
        units = tokenize_items(tok, b.items)
        r = []  # pairs x (correct, incorrect) x (conditional, unconditional, mean)
        for p in b.pairs:
            sides = []
            for side in ("correct_file", "incorrect_file"):
                f = p[side]
                u, text = units[f], texts[(name, Path(f).stem)]
                n_end = max(8, round(len(u) * len(text.split(". ")[-1]) / len(text)))
                full = token_logprobs(u)
                sides.append((full[-n_end:].sum(), token_logprobs(u[-n_end:]).sum(), full.mean()))
            r.append(sides)
        a = np.array(r)
        pmi = a[:, :, 0] - a[:, :, 1]
        print(f"{name}: pairs {len(a)}  mean-score acc {np.mean(a[:, 0, 2] > a[:, 1, 2]):.3f}  "
              f"ending conditional acc {np.mean(a[:, 0, 0] > a[:, 1, 0]):.3f}  "
              f"ending unconditional acc {np.mean(a[:, 0, 1] > a[:, 1, 1]):.3f}  "
              f"PMI acc {np.mean(pmi[:, 0] > pmi[:, 1]):.3f}")


def copyability(run: Path, n: int = 600) -> None:
    units = {r["utt_id"]: r for r in map(json.loads, open(run / "tokenize/units.jsonl"))}
    frame_rate = json.loads((run / "tokenize/tokenizer.json").read_text())["frame_rate"]

    def span(uid: str, start: float, end: float) -> list[int]:
        r = units[uid]
        t = np.cumsum([0, *r["durations"]]) / frame_rate
        return [u for i, u in enumerate(r["units"]) if start - 0.01 <= t[i] < end]

    same, occ = [], {}
    for m in map(json.loads, open(run / "corpus/manifest.jsonl")):
        ws = m.get("words") or []
        w = [x["word"].strip(".,").lower() for x in ws]
        k = len(w) - 1
        while k > 0 and w[k] not in ("is", "are"):
            k -= 1
        if k < 1 or m["utt_id"] not in units:
            continue
        noun = w[k - 1]  # "At last the <noun> is <result>."
        first = [i for i in range(k - 1) if w[i] == noun]
        if first:
            a = span(m["utt_id"], ws[first[-1]]["start"], ws[first[-1]]["end"])
            b = span(m["utt_id"], ws[k - 1]["start"], ws[k - 1]["end"])
            same.append((noun, m.get("voice"), a, b, m["utt_id"]))
        for i, word in enumerate(w):
            occ.setdefault((word, m.get("voice")), []).append((m["utt_id"], span(m["utt_id"], ws[i]["start"],
                                                                                   ws[i]["end"])))

    def ratio(a: list, b: list) -> float:
        return difflib.SequenceMatcher(None, a, b).ratio()

    def tri(a: list, b: list) -> float:
        ga = {tuple(a[i:i + 3]) for i in range(len(a) - 2)}
        gb = {tuple(b[i:i + 3]) for i in range(len(b) - 2)}
        return len(ga & gb) / max(1, len(gb))

    rng = random.Random(0)
    keys = list(occ)
    rows = {"same story": [], "other story, same word and voice": [], "random word": []}
    for noun, voice, a, b, uid in same[:n]:
        rows["same story"].append((ratio(a, b), tri(a, b)))
        others = [u for x, u in occ[(noun, voice)] if x != uid]
        if others:
            c = rng.choice(others)
            rows["other story, same word and voice"].append((ratio(c, b), tri(c, b)))
        c = rng.choice(occ[rng.choice(keys)])[1]
        rows["random word"].append((ratio(c, b), tri(c, b)))
    print(f"copyability ({len(same)} stories whose ending repeats an earlier noun; first {n} used):")
    for k, v in rows.items():
        v = np.array(v)
        print(f"  {k:34s} difflib ratio {v[:, 0].mean():.3f}  shared unit trigrams {v[:, 1].mean():.3f}")


if __name__ == "__main__":
    run_dir = Path(sys.argv[1]).resolve()
    context_gain(run_dir, Path(sys.argv[2]) if len(sys.argv) > 2 else run_dir / "unitlm")
    copyability(run_dir)
