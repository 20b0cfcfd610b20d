"""Export an aligned model: ``python -m alignslm.export --run-dir D --round N --out DIR``.

Writes a self-describing directory that plain ``transformers`` loads:

    DIR/config.json, model.safetensors   the unit LM with round N's LoRA adapter merged into the weights
                                         (base + round-N/train/adapter: the adapter is cumulative), with
                                         ``offset`` and ``n_units`` in config.json (TWIST's convention)
    DIR/tokenizer/                       tokenizer.json + quantizer (+ feature scale) of the run: audio ->
                                         units with alignslm.speech.tokenizer.load_tokenizer(DIR/"tokenizer"); the
                                         encoder itself is referenced by its path (tokenizer.json)
    DIR/vocoder/                         vocoder.json + its weights: units -> audio with
                                         alignslm.vocoder.load_vocoder(DIR/"vocoder")
    DIR/alignslm.json                    what this is: run, round, adapter, support, offset, n_units

    model = AutoModelForCausalLM.from_pretrained(DIR)          # unit k is token k + config.offset
    lm = UnitLM.from_pretrained(DIR)                           # the same, with the unit mapping

Round 0 exports the base model.  The default round is the last one whose train stage finished.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from alignslm import logger
from alignslm.rundir import Manifest, policy_adapters, read_json, write_json
from alignslm.speech.tokenizer import QUANTIZER_NPY, SCALE_NPY, TOKENIZER_JSON

TOKENIZER_FILES = (TOKENIZER_JSON, QUANTIZER_NPY, "quantizer.json", SCALE_NPY)


class ExportError(RuntimeError):
    """The run directory does not hold what the export needs; the message says which stage to run."""


def last_trained_round(run_dir: str | Path) -> int:
    """The last round whose train stage finished (0 = none: the base model)."""
    stages = Manifest(run_dir).data["stages"]
    done = [int(k.split("/")[0].split("-")[1]) for k, e in stages.items()
            if k.startswith("round-") and k.endswith("/train") and e.get("finished")]
    return max(done, default=0)


def check_round(run_dir: Path, rnd: int) -> None:
    """Round ``rnd``'s policy must exist: its train stage finished (round 0 = the base)."""
    if rnd < 0:
        raise ExportError(f"--round {rnd}: rounds are 0 (the base model), 1, 2, ...")
    if not (run_dir / "unitlm" / "unitlm.json").is_file():
        raise ExportError(f"{run_dir}: no unitlm/unitlm.json; is this a run directory (python -m alignslm.run)?")
    entry = Manifest(run_dir).entry(f"round-{rnd}/train") if rnd else {"finished": True}
    if not (entry or {}).get("finished"):
        raise ExportError(f"{run_dir}: round {rnd} has no finished train stage (last trained round: "
                          f"{last_trained_round(run_dir)}); run it, or pass that --round")


def export(run_dir: str | Path, rnd: int | None, out: str | Path, dtype: str = "auto") -> Path:
    """Write the merged checkpoint of round ``rnd`` (None = the last trained) and its tokenizer and vocoder."""
    from alignslm.lm.unitlm import load_unitlm

    run_dir, out = Path(run_dir).expanduser(), Path(out).expanduser()
    rnd = last_trained_round(run_dir) if rnd is None else rnd
    check_round(run_dir, rnd)
    adapters = policy_adapters(run_dir, rnd)
    lm = load_unitlm(run_dir / "unitlm", adapters=adapters, merge=True, dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(out)
    _copy_tokenizer(run_dir / "tokenize", out / "tokenizer")
    _copy_vocoder(run_dir / "vocoder", out / "vocoder")
    write_json(out / "alignslm.json", {"run_dir": str(run_dir.resolve()), "round": rnd,
                                       "adapter": str(adapters[0] / "adapter") if adapters else None,
                                       "merged": True, **lm.meta()})
    logger.info("exported round %d of %s to %s", rnd, run_dir, out)
    return out


def _copy_tokenizer(src: Path, dst: Path) -> None:
    if not (src / TOKENIZER_JSON).is_file():
        raise ExportError(f"{src / TOKENIZER_JSON} not found: run the tokenize stage first")
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _copy_vocoder(src: Path, dst: Path) -> None:
    """The vocoder stage's vocoder.json and the weights it points to, so that load_vocoder(dst) works alone."""
    if not (src / "vocoder.json").is_file():
        raise ExportError(f"{src / 'vocoder.json'} not found: run the vocoder stage first")
    meta = read_json(src / "vocoder.json")
    if dst.exists():
        shutil.rmtree(dst)
    weights = (src / meta.get("path", ".")).resolve()
    shutil.copytree(weights, dst / "model", ignore=shutil.ignore_patterns("shards", "*.tmp", "ckpt"))
    write_json(dst / "vocoder.json", {**meta, "path": "model"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alignslm.export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="the run directory (run.run_dir)")
    p.add_argument("--round", type=int, default=None, help="round to export (0 = base; default: the last trained)")
    p.add_argument("--out", required=True, help="output directory (a Hugging Face model directory)")
    p.add_argument("--dtype", default="auto", help="weights dtype: auto | float32 | bfloat16 | float16")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        out = export(args.run_dir, args.round, args.out, args.dtype)
    except (ExportError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
