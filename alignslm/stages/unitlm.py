"""Stage ``unitlm``: pretrain the demo unit LM, or check a real one (``unitlm.path``, e.g. TWIST).

Reads ``tokenize/units.jsonl`` + ``tokenizer.json`` (K) and ``corpus/manifest.jsonl`` (split).  Writes
``unitlm/unitlm.json`` ({"path", "offset", "n_units", "bos_id", "eos_id", "pad_id", "support", ...}, read
by :func:`alignslm.lm.unitlm.load_unitlm`; "path" is relative to this directory, or an external model)
and, for the demo, ``unitlm/model/`` (save_pretrained, with ``config.offset``) and ``unitlm/ckpt/last.pt``
(resume).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignslm import logger
from alignslm.lm.unitlm import UnitLMError, lm_unit_problems, special_ids
from alignslm.rundir import StageContext, atomic_dir, read_json, read_jsonl, write_json

if TYPE_CHECKING:
    from alignslm.config import Config


def check(cfg: Config) -> list[str]:
    u = cfg.unitlm
    problems = []
    if u.path:  # its existence: alignslm.run.check_paths (the stage graph's external inputs)
        p = Path(u.path).expanduser()
        if p.exists() and not (p / "config.json").is_file():
            problems.append(f"unitlm.path={u.path}: no config.json there (a Hugging Face model directory is needed)")
        return problems
    if u.d_model % u.n_heads:
        problems.append(f"unitlm.d_model ({u.d_model}) must be a multiple of unitlm.n_heads ({u.n_heads})")
    if min(u.steps, u.batch_size, u.context, u.checkpoint_every) < 1 or u.warmup < 0:
        problems.append("unitlm.steps, batch_size, context, checkpoint_every must be >= 1, warmup >= 0")
    return problems


def _quantizer_k(tok_dir: Path) -> int:
    meta = read_json(tok_dir / "tokenizer.json")
    return int(meta["n_units"])


def _external(ctx: StageContext, k: int) -> dict:
    """Validate a user-supplied HF model against the quantizer and point unitlm.json at it."""
    from alignslm.deps import require

    require("transformers")
    from transformers import AutoConfig

    u = ctx.cfg.unitlm
    path = Path(u.path).expanduser().resolve()
    config = AutoConfig.from_pretrained(path)
    ids = special_ids(config, u.offset)
    n_units = u.n_units if u.n_units is not None else k
    vocab = int(config.vocab_size)
    problems = lm_unit_problems(k, config, u.n_units, u.offset, path, ctx.inputs["tokenize"] / "tokenizer.json")
    if problems:
        raise UnitLMError("; ".join(problems))
    meta = {"path": str(path), "n_units": n_units, "support": u.support, "vocab_size": vocab, "source": "external",
            **{k2: ids[k2] for k2 in ("offset", "bos_id", "eos_id", "pad_id")}}
    write_json(ctx.out / "unitlm.json", meta)
    return {"source": "external", "n_units": n_units, "offset": ids["offset"], "vocab_size": vocab}


def _splits(ctx: StageContext) -> dict[str, str]:
    man = ctx.inputs.get("corpus", ctx.run_dir / "corpus") / "manifest.jsonl"
    if not man.is_file():
        return {}
    return {r["utt_id"]: r.get("split", "train") for r in read_jsonl(man)}


def _pretrain(ctx: StageContext, k: int, spec: Any, seqs: list) -> tuple[Any, dict]:
    from alignslm.lm.pretrain import build_model, train

    u = ctx.cfg.unitlm
    model = build_model(k, u.d_model, u.n_layers, u.n_heads, u.context, seed=spec.seed)
    return model, train(model, seqs, spec, ckpt_dir=ctx.out / "ckpt")


def run(ctx: StageContext) -> dict:
    from alignslm.lm.pretrain import TrainSpec, eval_loss

    tok_dir = ctx.inputs["tokenize"]
    k = _quantizer_k(tok_dir)
    u = ctx.cfg.unitlm
    if u.path:
        return _external(ctx, k)
    if u.n_units is not None and u.n_units != k:
        raise UnitLMError(f"unitlm.n_units={u.n_units} but the quantizer has K={k}; leave unitlm.n_units unset")
    split = _splits(ctx)
    rows = read_jsonl(tok_dir / "units.jsonl")
    train_seqs = [r["units"] for r in rows if split.get(r["utt_id"], "train") == "train" and r["units"]]
    dev_seqs = [r["units"] for r in rows if split.get(r["utt_id"]) == "dev" and r["units"]]
    spec = TrainSpec(steps=u.steps, batch_size=u.batch_size, context=u.context, lr=u.lr, warmup=u.warmup,
                     checkpoint_every=u.checkpoint_every, seed=ctx.seed("pretrain") % (2**31),
                     doc_mask=u.doc_mask)
    logger.info("unitlm: pretraining on %d train utterances (%d units), %d dev; %d steps", len(train_seqs),
                sum(map(len, train_seqs)), len(dev_seqs), spec.steps)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    if u.threads > 0:
        torch.set_num_threads(u.threads)
    try:
        model, summary = _pretrain(ctx, k, spec, train_seqs)
    finally:
        torch.set_num_threads(threads)
    model_dir = ctx.out / "model"
    with atomic_dir(model_dir) as tmp:
        model.save_pretrained(tmp)
    dev = round(eval_loss(model, dev_seqs, u.context), 4) if dev_seqs else None
    cfg = model.config
    meta = {"path": model_dir.name, "offset": int(cfg.offset), "n_units": k, "bos_id": cfg.bos_token_id,
            "eos_id": cfg.eos_token_id, "pad_id": cfg.pad_token_id, "support": u.support,
            "vocab_size": int(cfg.vocab_size), "source": "demo", "dev_loss": dev,
            "params": sum(p.numel() for p in model.parameters()), "train_log": summary.pop("log")}
    write_json(ctx.out / "unitlm.json", meta)
    return {"source": "demo", "n_units": k, "params": meta["params"], "train_utts": len(train_seqs),
            "dev_loss": dev, "wall_s": round(time.perf_counter() - t0, 1), **summary}
