"""The stage graph: which stages run, in what order, with which config sections and inputs.

A stage is a function ``run(ctx: StageContext) -> dict`` (its summary) living in
``alignslm.stages.<module>``; it is imported lazily, so ``--help`` and ``--dry-run`` stay fast.
Its hash is a function of its config sections, the hashes of the stages it reads and the identity of
external files it loads; a finished stage with the same hash is skipped.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignslm import __version__, logger
from alignslm.config import Config, section_json
from alignslm.rundir import (
    STAMP,
    DiskFullError,
    Manifest,
    StageContext,
    barrier,
    disk_free,
    hash_path,
    hash_str,
    rank_world,
    write_text,
)


@dataclass(frozen=True)
class StageSpec:
    name: str
    target: str  # "module:function"
    sections: tuple[str, ...]  # config sections (or "section.key") in the hash
    deps: tuple[str, ...]  # stage names read; "train@prev" = previous round's train
    per_round: bool = False
    external: tuple[str, ...] = ()  # config keys holding external paths (hashed by size/mtime)
    help: str = ""


STAGES: dict[str, StageSpec] = {s.name: s for s in [
    StageSpec("corpus", "alignslm.stages.corpus:run", ("corpus", "run.seed", "run.smoke"), (),
              external=("corpus.manifest",), help="demo stories spoken by eSpeak NG, or a real manifest"),
    StageSpec("benchmarks", "alignslm.stages.benchmarks:run", ("benchmarks", "run.seed"), (),
              external=("benchmarks.root", "benchmarks.salmon_root", "benchmarks.prosaudit_root",
                        "benchmarks.multispeaker_root"),
              help="mini sWUGGY/sBLIMP/sSC/tSC/SALMon/multi-speaker sSC/tSC (demo) or real data sets"),
    StageSpec("tokenize", "alignslm.stages.tokenize:run", ("tokenize", "run.seed"), ("corpus",),
              external=("tokenize.encoder_path", "tokenize.quantizer"), help="audio -> deduplicated units"),
    StageSpec("unitlm", "alignslm.stages.unitlm:run", ("unitlm", "run.seed"), ("corpus", "tokenize"),
              external=("unitlm.path",), help="pretrain the demo unit LM, or check a real one"),
    StageSpec("vocoder", "alignslm.stages.vocoder:run", ("vocoder", "run.seed"), ("corpus", "tokenize"),
              external=("vocoder.path", "vocoder.speaker_embedding"),
              help="train the demo vocoder, or check a HiFi-GAN"),
    StageSpec("sample", "alignslm.stages.sample:run", ("sample", "unitlm.support", "run.seed"),
              ("corpus", "tokenize", "unitlm", "train@prev"), per_round=True, help="continuations"),
    StageSpec("vocode", "alignslm.stages.vocode:run", ("vocoder",), ("sample", "vocoder", "corpus"),
              per_round=True, help="continuation units -> wavs"),
    StageSpec("transcribe", "alignslm.stages.transcribe:run", ("asr",), ("vocode",), per_round=True,
              external=("asr.model_path",), help="wavs -> text (Whisper, CTranslate2)"),
    StageSpec("judge", "alignslm.stages.judge:run", ("judge",), ("transcribe",), per_round=True,
              external=("judge.model_path",), help="LLM score / perplexity, auto-BLEU"),
    StageSpec("pairs", "alignslm.stages.pairs:run", ("pairs", "curriculum"), ("judge", "sample"),
              per_round=True, help="chosen/rejected preference pairs"),
    StageSpec("train", "alignslm.stages.train:run", ("train", "curriculum.reference", "unitlm.support", "run.seed"),
              ("pairs", "unitlm", "train@prev"), per_round=True, help="DPO on a LoRA adapter"),
    StageSpec("evaluate", "alignslm.stages.evaluate:run",
              ("eval", "sample", "judge", "asr", "unitlm.support", "run.seed"),
              ("benchmarks", "tokenize", "unitlm", "vocoder", "corpus", "train@all"),
              help="sWUGGY/sBLIMP/sSC/tSC + generation metrics per round"),
    StageSpec("report", "alignslm.stages.report:run", ("eval",), ("evaluate", "train@all"),
              help="results.json, report.md, plots"),
]}

ROUND_STAGES = [s for s in STAGES.values() if s.per_round]


@dataclass
class Step:
    """One planned execution of a stage (a round stage appears once per round)."""

    spec: StageSpec
    round: int | None

    @property
    def key(self) -> str:
        return self.spec.name if self.round is None else f"round-{self.round}/{self.spec.name}"


def plan(cfg: Config) -> list[Step]:
    steps = [Step(STAGES[n], None) for n in ("corpus", "benchmarks", "tokenize", "unitlm", "vocoder")]
    for r in range(1, cfg.curriculum.rounds + 1):
        steps += [Step(s, r) for s in ROUND_STAGES]
    steps += [Step(STAGES["evaluate"], None), Step(STAGES["report"], None)]
    return steps


def out_dir(run_dir: Path, step: Step) -> Path:
    return run_dir / step.key


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for p in dotted.split("."):
        obj = getattr(obj, p)
    return obj


def dep_keys(step: Step, cfg: Config) -> dict[str, str]:
    """Dependency name -> manifest key of the step it refers to."""
    out: dict[str, str] = {}
    for d in step.spec.deps:
        if d == "train@prev":
            if step.round is not None and step.round > 1:
                out["train_prev"] = f"round-{step.round - 1}/train"
        elif d == "train@all":
            for r in range(1, cfg.curriculum.rounds + 1):
                out[f"train_{r}"] = f"round-{r}/train"
        elif STAGES[d].per_round:
            out[d] = f"round-{step.round}/{d}"
        else:
            out[d] = d
    return out


def step_hash(step: Step, cfg: Config, manifest: Manifest) -> str:
    parts = [step.spec.name, __version__, str(step.round)]
    for s in step.spec.sections:
        v = _get(cfg, s)
        parts.append(f"{s}={section_json(v) if hasattr(v, '__dataclass_fields__') else repr(v)}")
    for name, key in sorted(dep_keys(step, cfg).items()):
        e = manifest.entry(key)
        parts.append(f"{name}:{e['hash'] if e else 'none'}")
    for k in step.spec.external:
        v = _get(cfg, k)
        parts.append(f"{k}:{hash_path(v) if v else 'none'}")
    return hash_str(*parts)


def will_run(steps: list[Step], cfg: Config, manifest: Manifest, force: bool = False) -> list[bool]:
    """For each step, whether a run of ``steps`` executes it (else it is skipped as up to date).

    A step's hash includes its dependencies' hashes, so it is computed against the hashes the dependencies
    WILL have: a step that re-runs (changed config, new input) makes every step that reads it re-run too.
    """
    import copy

    sim = copy.deepcopy(manifest)  # never written
    out = []
    for st in steps:
        h = step_hash(st, cfg, sim)
        runs = force or not sim.is_done(st.key, h)
        sim.data["stages"][st.key] = {**(sim.entry(st.key) or {}), "hash": h, "finished": True}
        out.append(runs)
    return out


def resolve(target: str) -> Callable[[StageContext], dict]:
    mod, fn = target.split(":")
    return getattr(importlib.import_module(mod), fn)


WAV_BYTES_PER_S = 2 * 16000  # 16-bit mono at 16 kHz


def expected_bytes(step: Step, cfg: Config) -> int:
    """A generous estimate of what ``step`` writes (0 for the light stages), for the free-space check."""
    n = step.spec.name
    clip_s = cfg.sample.max_new_units / 25.0 + 10.0  # a continuation at >= 25 units/s, plus its prompt
    if n == "corpus" and not cfg.corpus.manifest:
        return cfg.corpus.n_stories * 20 * WAV_BYTES_PER_S  # a demo story lasts well under 20 s
    if n == "benchmarks" and not cfg.benchmarks.root:
        return cfg.benchmarks.n_pairs * 4 * 2 * 3 * 20 * WAV_BYTES_PER_S  # 4 sets, 2 sides, <= 3 voices
    if n == "vocode":
        return int(cfg.sample.n_prompts * cfg.sample.n_continuations * clip_s * WAV_BYTES_PER_S)
    if n == "unitlm" and not cfg.unitlm.path:  # weights + an Adam checkpoint, fp32
        params = 12 * cfg.unitlm.n_layers * cfg.unitlm.d_model ** 2 + 2 * 1024 * cfg.unitlm.d_model
        return 4 * params * 4
    if n == "evaluate":
        rounds = cfg.curriculum.rounds + 1
        return int(rounds * cfg.eval.n_prompts * cfg.sample.n_continuations * clip_s * WAV_BYTES_PER_S)
    return 0


def check_space(step: Step, cfg: Config, run_dir: Path) -> None:
    """Before a heavy stage: say what it expects to write, and stop now if the device has less free."""
    need = expected_bytes(step, cfg)
    if need == 0:
        return
    free = disk_free(run_dir)
    logger.info("%s: expects to write up to %.1f MiB (%.1f MiB free)", step.key, need / 2**20, free / 2**20)
    if free < need:
        raise DiskFullError(run_dir / step.key, needed=need, free=free, what="not enough space on the device for")


def step_of(key: str) -> Step:
    """The step a manifest key names ("tokenize", "round-2/train")."""
    if key.startswith("round-"):
        r, name = key.split("/", 1)
        return Step(STAGES[name], int(r.split("-")[1]))
    return Step(STAGES[key], None)


def run_step(step: Step, cfg: Config, run_dir: Path, manifest: Manifest, *, force: bool = False,
             progress: bool = True) -> tuple[bool, dict]:
    """Run one step unless it is done with the same hash and its files are as it wrote them.

    A finished step whose files are missing, truncated or altered runs again from scratch, as does a step
    under ``force``; a damaged input (a finished dependency's files) makes its producing step run again
    first.  Returns (ran, summary).
    """
    h = step_hash(step, cfg, manifest)
    redo = force
    if not force and manifest.is_done(step.key, h):
        problem = manifest.problem(step.key)
        if problem is None:
            return False, manifest.entry(step.key)["summary"]
        logger.warning("%s: %s; running %s again", step.key, problem, step.key)
        redo = True
    deps = dep_keys(step, cfg)
    missing = [k for k in deps.values() if not (manifest.entry(k) or {}).get("finished")]
    if missing:
        raise RuntimeError(f"stage {step.key} needs {', '.join(missing)} first "
                           f"(run them, or run the whole pipeline without --stage)")
    for k in deps.values():  # inputs are checked before they are read
        if manifest.problem(k) is not None:
            run_step(step_of(k), cfg, run_dir, manifest, progress=progress)
    h = step_hash(step, cfg, manifest)
    out = out_dir(run_dir, step)
    check_space(step, cfg, run_dir)
    stamp = out / STAMP
    rank, world = rank_world()
    if rank == 0:
        if out.exists() and (redo or not stamp.exists() or stamp.read_text().strip() != h):
            _clear(out)  # outputs of another config, damaged or forced: start over, shards included
        for f in out.glob("rejects*.jsonl") if out.exists() else ():
            f.unlink()  # rejects belong to this attempt (kept shards give theirs back, see run_sharded)
        out.mkdir(parents=True, exist_ok=True)
        write_text(stamp, h + "\n")
        manifest.mark_started(step.key, h)
    barrier()
    ctx = StageContext(name=step.spec.name, cfg=cfg, run_dir=run_dir, out=out, round=step.round,
                       inputs={n: run_dir / k for n, k in deps.items()}, rank=rank, world=world,
                       progress=progress)
    t0 = time.time()
    try:
        summary = resolve(step.spec.target)(ctx) or {}
    except StageFailed:  # a stage may apply the rule itself (evaluate, per model): same clean-up
        if rank == 0:
            _set_aside(out)
        raise
    summary = {**summary, **ctx.rejects.summary()}
    problem = _rank0_says(failure_problem(step.key, summary, cfg.run.max_failed_share))
    if problem:
        if rank == 0:
            _set_aside(out)
        raise StageFailed(problem)
    barrier()
    if rank == 0:
        manifest.mark_done(step.key, h, summary, time.time() - t0)
    barrier()
    logger.info("%s done in %.1fs: %s", step.key, time.time() - t0, summary_line(summary))
    return True, summary


class StageFailed(RuntimeError):
    """A stage ran but too many of its items failed: it is not recorded as finished."""


def failure_problem(key: str, summary: dict, max_share: float) -> str | None:
    """Why a finished stage must count as failed, or None.

    The one rule for every stage: a stage that reports ``items_tried`` (items it attempted) and
    ``items_failed`` (items it could not process: bad input, a service error; not items whose content it
    found unusable, such as a continuation without speech, nor upstream failures) fails when every tried
    item failed, or more than ``max_share`` (run.max_failed_share) of them.
    """
    tried, failed = summary.get("items_tried"), summary.get("items_failed")
    if not tried or failed is None:
        return None
    if failed < tried and failed <= max_share * tried:
        return None
    reasons = sorted((summary.get("reject_reasons") or {}).items(), key=lambda kv: -kv[1])
    why = "; ".join(f"{r or 'unknown'}: {n}" for r, n in reasons[:3]) or "see rejects.jsonl"
    return (f"stage {key}: {failed} of {tried} items failed (rejects by reason: {why}), more than "
            f"run.max_failed_share={max_share:g}; it is not recorded as finished. Fix the cause (its rejects are "
            f"kept in {key}/failed-attempt/) and run the same command again: the failed items are redone")


def _rank0_says(problem: str | None) -> str | None:
    """Rank 0's verdict for every rank (it holds the merged rows; the others only their shards' rows)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return problem
    if not (dist.is_available() and dist.is_initialized()):
        return problem
    box = [problem]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _set_aside(out: Path) -> None:
    """Move a failed attempt's shards and rejects to ``failed-attempt/`` so that a re-run redoes its items.

    Everything else in the stage directory (a fitted quantizer, the HTTP judge's cache of successful
    replies) stays, so nothing that worked is paid for twice.
    """
    import shutil

    dest = out / "failed-attempt"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir()
    for child in out.iterdir():
        if child.name == "shards" or (child.name.startswith("rejects") and child.suffix == ".jsonl"):
            shutil.move(str(child), str(dest / child.name))


def _clear(path: Path) -> None:
    import shutil

    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def summary_line(summary: dict) -> str:
    """The stage's one-line summary: its first 8 short items, then every cost in seconds (``*_s``) after them."""
    items = [(k, f"{k}={v}") for k, v in summary.items() if isinstance(v, (int, float, str)) and len(str(v)) < 40]
    return ", ".join([x for _, x in items[:8]] + [x for k, x in items[8:] if k.endswith("_s")])
