"""The CLI driver: ``python -m alignslm.run [--config X.yaml] [--stage S] [--dry-run] [key=value ...]``.

With no arguments it runs the whole method on the offline demo world.  Under ``torchrun`` every data
stage shards its items by rank and rank 0 merges; training runs DDP.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from alignslm import logger
from alignslm.config import Config, ConfigError, help_text, load_config, to_dict
from alignslm.impl import ImplError
from alignslm.impl import from_env as impl_from_env
from alignslm.pipeline import STAGES, Step, dep_keys, plan, resolve, run_step, will_run
from alignslm.rundir import DiskFullError, Manifest, barrier, disk_errors, rank_world, remove_stale_temps, write_text

EPILOG = "stages (in order; round stages repeat per curriculum round):\n" + "\n".join(
    f"  {s.name:<11} {s.help}" for s in STAGES.values()) + "\n\noptions (key=value overrides):\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m alignslm.run", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Align-SLM: sample -> vocode -> transcribe -> judge -> pairs -> DPO, in curriculum rounds, "
                    "then evaluate. With no arguments: the offline demo.",
        epilog=EPILOG + help_text())
    p.add_argument("--config", help="YAML config (sections as in configs/demo.yaml)")
    p.add_argument("--stage", choices=sorted(STAGES), help="run only this stage (its inputs must exist)")
    p.add_argument("--round", type=int, help="with --stage: only this round (default: every round)")
    p.add_argument("--dry-run", action="store_true", help="check every path and format, print the plan")
    p.add_argument("--force", action="store_true", help="re-run selected stages even when up to date")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (same as run.smoke=true)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.add_argument("--debug", action="store_true", help="print the traceback of a failed stage")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sample.top_k=25")
    return p


def missing_paths(cfg: Config) -> dict[str, str]:
    """config key -> path, for every external path the config names that does not exist."""
    out = {}
    for spec in STAGES.values():
        for key in spec.external:
            sec, name = key.split(".")
            v = getattr(getattr(cfg, sec), name)
            if v and not Path(v).expanduser().exists():
                out[key] = str(v)
    return out


def check_paths(cfg: Config) -> list[str]:
    """Every external path the config names must exist (checked before any model loads)."""
    from alignslm.judge import url_problem

    problems = [f"{key}: path does not exist: {v}" for key, v in missing_paths(cfg).items()]
    return problems + [p for p in [url_problem(cfg.judge)] if p]


def judge_endpoint_problems(cfg: Config, steps: list[Step]) -> list[str]:
    """An HTTP judge that a selected stage will ask must answer now, before hours of sampling."""
    if not any(st.spec.name in ("judge", "evaluate") for st in steps):
        return []
    from alignslm.judge import endpoint_problem

    return [f"judge.url: {p}"] if (p := endpoint_problem(cfg.judge)) else []


def cross_checks(cfg: Config) -> list[str]:
    """Formats that must agree across components, read cheaply (config.json files, the .npy header).

    The checks are the components' (speech.tokenizer.quantizer_dim_problem, lm.unitlm.lm_unit_problems,
    lm.prompts.context_problem), which the stages call too, so --dry-run and the run fail on the same
    condition with the same message.
    """
    import json
    from types import SimpleNamespace

    import numpy as np

    from alignslm.lm.prompts import context_problem
    from alignslm.lm.unitlm import context_of, lm_unit_problems
    from alignslm.speech.encoders import hubert_frame_rate, hubert_layer_problem
    from alignslm.speech.tokenizer import quantizer_dim_problem

    problems: list[str] = []
    t, u = cfg.tokenize, cfg.unitlm
    k = dim = None
    q = Path(t.quantizer).expanduser() if t.quantizer else None
    if q is None:
        k = t.n_units  # the tokenize stage fits K = tokenize.n_units
    elif q.suffix == ".npy" and q.is_file():
        try:
            k, dim = np.load(q, mmap_mode="r").shape
        except (ValueError, OSError) as e:
            problems.append(f"tokenize.quantizer={q}: not a (K, D) .npy array ({e})")
    enc = Path(t.encoder_path).expanduser() / "config.json" if t.encoder_path else None
    enc_cfg = json.loads(enc.read_text()) if t.encoder == "hubert" and enc is not None and enc.is_file() else None
    frame_rate = 50.0 / t.pool
    if enc_cfg is not None:
        if "num_hidden_layers" in enc_cfg:
            layer_problem = hubert_layer_problem(enc.parent, t.layer, int(enc_cfg["num_hidden_layers"]))
            problems += [layer_problem] if layer_problem else []
        frame_rate = hubert_frame_rate(enc_cfg.get("conv_stride", [5, 2, 2, 2, 2, 2, 2]))
        hidden = enc_cfg.get("hidden_size")
        if dim is not None and hidden is not None:
            p = quantizer_dim_problem(dim, hidden, t.quantizer, f"hubert {enc.parent} (hidden_size {hidden})",
                                      t.layer)
            problems += [p] if p else []
    lm = Path(u.path).expanduser() / "config.json" if u.path else None
    lm_cfg = json.loads(lm.read_text()) if lm is not None and lm.is_file() else None
    if k is not None and lm_cfg is not None:
        problems += lm_unit_problems(int(k), SimpleNamespace(**lm_cfg), u.n_units, u.offset, u.path,
                                     t.quantizer or f"tokenize.n_units={t.n_units}")
    context = context_of(lm_cfg) if lm_cfg is not None else (u.context if u.path is None else None)
    p = context_problem(cfg.sample.prompt_seconds, frame_rate, cfg.sample.max_new_units, context)
    problems += [f"sample: {p}"] if p else []
    return problems


def dry_run(cfg: Config, steps: list[Step], force: bool = False) -> int:
    problems = check_paths(cfg) + cross_checks(cfg)
    for spec in {s.spec.name: s.spec for s in steps}.values():
        mod = spec.target.split(":")[0]
        try:
            check = getattr(__import__(mod, fromlist=["check"]), "check", None)
        except ImportError as e:
            problems.append(f"stage {spec.name}: cannot import {mod}: {e}")
            continue
        if check is not None:
            # a stage's check() leaves the external paths' existence (and the judge URL) to check_paths
            problems += [f"{spec.name}: {m}" for m in check(cfg)]
    print(f"plan for run directory {cfg.run.run_dir} ([run] = will run, [skip] = up to date):")
    runs = will_run(steps, cfg, Manifest(Path(cfg.run.run_dir).expanduser()), force=force)
    for i, (st, r) in enumerate(zip(steps, runs), 1):
        print(f"  {i:2d}. {st.key:<22} [{'run ' if r else 'skip'}] {_estimate(cfg, st) if r else ''}")
    if problems:
        print("problems:")
        for m in problems:
            print(f"  - {m}")
        return 2
    print("all paths and formats check out")
    return 0


def _estimate(cfg: Config, st: Step) -> str:
    n = st.spec.name
    if n == "sample":
        return f"{cfg.sample.n_prompts} prompts x {cfg.sample.n_continuations} continuations"
    if n in ("vocode", "transcribe", "judge"):
        return f"{cfg.sample.n_prompts * cfg.sample.n_continuations} continuations"
    if n == "unitlm" and cfg.unitlm.path is None:
        return f"pretrain {cfg.unitlm.steps} steps"
    if n == "corpus" and cfg.corpus.manifest is None:
        return f"{cfg.corpus.n_stories} demo stories"
    return ""


def _setup_logging(quiet: bool, rank: int) -> None:
    level = logging.WARNING if quiet or rank != 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


def _init_distributed() -> None:
    rank, world = rank_world()
    if world <= 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def select(steps: list[Step], stage: str | None, rnd: int | None) -> list[Step]:
    if stage is None:
        return steps
    sel = [s for s in steps if s.spec.name == stage and (rnd is None or s.round == rnd)]
    if not sel:
        raise ConfigError(f"--stage {stage} --round {rnd}: no such step in the plan")
    return sel


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank, _ = rank_world()
    _setup_logging(args.quiet, rank)
    overrides = list(args.overrides) + (["run.smoke=true"] if args.smoke else [])
    try:
        cfg = load_config(args.config, overrides)
        steps = select(plan(cfg), args.stage, args.round)
        impl_from_env()  # ALIGNSLM_IMPL: a value no op has fails here, before any stage
    except (ConfigError, ImplError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(cfg, steps, force=args.force)
    problems = check_paths(cfg) + judge_endpoint_problems(cfg, steps)
    if problems:
        print("config error:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    run_dir = Path(cfg.run.run_dir).expanduser()
    try:
        return _run(args, argv, cfg, steps, run_dir, rank)
    except DiskFullError as e:  # at start (config.yaml, the manifest) as in a stage: one line, then the hint
        _resume_hint(argv, str(e))
        return 1


def _run(args: argparse.Namespace, argv: list[str] | None, cfg: Config, steps: list[Step], run_dir: Path,
         rank: int) -> int:
    with disk_errors(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    _init_distributed()
    if rank == 0:
        import yaml

        remove_stale_temps(run_dir)  # what writes killed mid-way left behind
        remove_stale_temps(Path(cfg.run.cache_dir).expanduser(), only_dead=True)
        write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    barrier()
    t_all = time.time()
    for st in steps:
        manifest = Manifest(run_dir)  # other ranks may have written it
        try:
            with disk_errors(run_dir / st.key):  # a write no helper wrapped still says "disk full" clearly
                ran, summary = run_step(st, cfg, run_dir, manifest, force=args.force, progress=not args.quiet)
        except KeyboardInterrupt:
            _resume_hint(argv, "interrupted")
            return 130
        except DiskFullError as e:
            _resume_hint(argv, f"stage {st.key} stopped: {e}")
            return 1
        except Exception as e:  # noqa: BLE001 - report, keep the run resumable
            report_failure(st.key, e, debug=args.debug)
            _resume_hint(argv, "")
            return 1
        if rank == 0:
            print(f"[{'ran ' if ran else 'skip'}] {st.key}", file=sys.stderr, flush=True)
    if rank == 0 and args.stage is None:
        _final_summary(run_dir, time.time() - t_all)
    return 0


# A bug shows its traceback; any other error is the message its raiser wrote for the user (--debug: traceback).
BUGS = (AssertionError, AttributeError, IndexError, KeyError, NameError, TypeError, UnboundLocalError)


def report_failure(key: str, e: BaseException, debug: bool = False) -> None:
    """One clear line for an expected error; the traceback for a bug, or for any error with --debug."""
    bug = isinstance(e, BUGS)
    if debug or bug:
        logger.error("stage %s failed", key, exc_info=e)
    terse = bug or isinstance(e, OSError) or not str(e)  # "[Errno 28] No space left" needs its type
    text = f"{type(e).__name__}: {e}" if terse else str(e)
    if not text.startswith(f"stage {key}"):
        text = f"stage {key} failed: {text}"
    print(f"\nerror: {text}" + ("" if debug or bug else "\n(--debug prints the traceback)"), file=sys.stderr)


def _resume_hint(argv: list[str] | None, why: str) -> None:
    cmd = "python -m alignslm.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    why = f"\n{why}" if why else ""
    print(f"{why}\nEverything finished so far is kept. Resume with:\n  {cmd.strip()}", file=sys.stderr)


def _final_summary(run_dir: Path, seconds: float) -> None:
    report = run_dir / "eval" / "report.md"
    table = run_dir / "report" / "headline.md"
    print(f"\nalignslm finished in {seconds / 60:.1f} min; run directory: {run_dir}")
    if table.exists():
        print(table.read_text())
    for p in (run_dir / "report" / "report.md", report):
        if p.exists():
            print(f"report: {p}")
            break


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main", "dep_keys", "resolve"]
