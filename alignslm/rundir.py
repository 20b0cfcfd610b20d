"""The run directory: atomic files, JSONL, the stage manifest, rejects, resumable shards, rank sharding.

Rules (design.md): outputs are written under a temporary name and renamed into place, so a reader never
sees half a file; a stage records a hash of (its config, its inputs) in ``manifest.json`` and is skipped
when its outputs exist with the same hash; long stages write shards and resume at shard granularity;
items that cannot be processed go to ``rejects.jsonl`` with a reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignslm import logger

# --------------------------------------------------------------------------------------------------
# Atomic files and JSONL
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_p = Path(tmp)
    try:
        yield tmp_p
        with open(tmp_p, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_p, path)
    finally:
        if tmp_p.exists():
            tmp_p.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows atomically; return how many."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, default=_json_default) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file; a malformed line is an error naming the file and line."""
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e}); the file is corrupt, delete it to redo") from e
    return out


# --------------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------------


def hash_str(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def hash_path(path: str | Path) -> str:
    """Cheap identity of an external input: name, size and mtime of a file or of every file in a dir."""
    p = Path(path).expanduser()
    if not p.exists():
        return "missing:" + str(p)
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
    return hash_str(*(f"{f.relative_to(p.parent)}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files))


# --------------------------------------------------------------------------------------------------
# Distributed helpers (torchrun sets RANK / WORLD_SIZE)
# --------------------------------------------------------------------------------------------------


def rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def barrier() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    except ImportError:  # pragma: no cover
        pass


# --------------------------------------------------------------------------------------------------
# Rejects
# --------------------------------------------------------------------------------------------------


class Rejects:
    """``rejects.jsonl`` of items a stage could not process, one row per item id; counted in the summary.

    Idempotent per item: the ids already in the file (a crashed attempt of this stage wrote them) are read
    back on opening, and adding an id that is listed already writes nothing and is not counted again, so a
    shard redone after a crash does not list its rejects twice.  The first reason given for an item is kept.
    """

    def __init__(self, path: str | Path, stage: str):
        self.path = Path(path)
        self.stage = stage
        self.count = 0
        self.reasons: dict[str, int] = {}
        self._ids: set[str] = set()
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut short by the crash: its item is rejected (and written) again
                if isinstance(row, dict) and "id" in row and str(row["id"]) not in self._ids:
                    self._count(str(row["id"]), str(row.get("reason", "")))

    def _count(self, item_id: str, reason: str) -> None:
        self._ids.add(item_id)
        self.count += 1
        kind = reason.split(":")[0][:60]
        self.reasons[kind] = self.reasons.get(kind, 0) + 1

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._ids

    def add(self, item_id: str, reason: str, **extra: Any) -> None:
        if str(item_id) in self._ids:
            logger.debug("%s: %s is listed as a reject already", self.stage, item_id)
            return
        self._count(str(item_id), reason)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        row = {"stage": self.stage, "id": item_id, "reason": reason, **extra}
        torn = False  # a crash may have left a last line without its newline: start on a fresh line
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        with open(self.path, "a") as f:
            f.write(("\n" if torn else "") + json.dumps(row, default=_json_default) + "\n")
        logger.warning("%s: rejected %s: %s", self.stage, item_id, reason)

    def summary(self) -> dict:
        return {"rejects": self.count, "reject_reasons": dict(self.reasons)}


# --------------------------------------------------------------------------------------------------
# Stage context and resumable shards
# --------------------------------------------------------------------------------------------------


@dataclass
class StageContext:
    """What a stage function receives. ``out`` is its own directory; it writes only there."""

    name: str
    cfg: Any  # alignslm.config.Config
    run_dir: Path
    out: Path
    round: int | None = None
    inputs: dict[str, Path] = field(default_factory=dict)
    rank: int = 0
    world: int = 1
    progress: bool = True
    rejects: Rejects = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.rejects is None:
            suffix = f".rank{self.rank}" if self.world > 1 else ""
            self.rejects = Rejects(self.out / f"rejects{suffix}.jsonl", self.name)

    def round_dir(self, r: int | None = None) -> Path:
        r = self.round if r is None else r
        return self.run_dir / f"round-{r}"

    def seed(self, *salt: Any) -> int:
        """A deterministic per-stage seed derived from run.seed."""
        return int(hash_str(str(self.cfg.run.seed), self.name, str(self.round), *map(str, salt))[:8], 16)

    def tqdm(self, it: Iterable, **kw: Any) -> Iterable:
        if not self.progress or self.rank != 0:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, desc=kw.pop("desc", self.name), leave=False, **kw)


def run_sharded(
    ctx: StageContext,
    items: Sequence[Any],
    shard_size: int,
    process: Callable[[list[Any]], list[dict]],
    out_name: str,
) -> list[dict]:
    """Process ``items`` in shards of ``shard_size`` with resume, rank sharding and an atomic merge.

    Shard i is handled by rank ``i % world`` and written atomically to ``out/shards/<out_name>.NNNNN``;
    existing shards are not redone.  Rank 0 merges all shards, in order, into ``out/<out_name>``
    and returns the merged rows (other ranks return their own rows).
    """
    shard_dir = ctx.out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-len(items) // max(1, shard_size)))
    mine = [i for i in range(n_shards) if i % ctx.world == ctx.rank]
    todo = [i for i in mine if not (shard_dir / f"{out_name}.{i:05d}").exists()]
    if len(todo) < len(mine):
        logger.info("%s: resuming, %d of %d shards already done", ctx.name, len(mine) - len(todo), len(mine))
    rows_mine: list[dict] = []
    for i in ctx.tqdm(todo, desc=f"{ctx.name} shards", total=len(todo)):
        chunk = list(items[i * shard_size:(i + 1) * shard_size])
        rows = process(chunk)
        write_jsonl(shard_dir / f"{out_name}.{i:05d}", rows)
    barrier()
    if ctx.rank != 0:
        for i in mine:
            rows_mine.extend(read_jsonl(shard_dir / f"{out_name}.{i:05d}"))
        return rows_mine
    _wait_for(shard_dir, out_name, n_shards)
    merged: list[dict] = []
    for i in range(n_shards):
        merged.extend(read_jsonl(shard_dir / f"{out_name}.{i:05d}"))
    write_jsonl(ctx.out / out_name, merged)
    return merged


def _wait_for(shard_dir: Path, out_name: str, n: int, timeout_s: float = 3600.0) -> None:
    """Without a process group (plain multi-process), rank 0 waits for the other ranks' shards."""
    t0 = time.time()
    while True:
        missing = [i for i in range(n) if not (shard_dir / f"{out_name}.{i:05d}").exists()]
        if not missing:
            return
        if time.time() - t0 > timeout_s:
            raise RuntimeError(f"shards {missing[:5]} of {shard_dir}/{out_name} never appeared")
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------------


class Manifest:
    """``manifest.json``: stage key -> {hash, finished, summary, seconds}."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "manifest.json"
        self.data: dict = read_json(self.path) if self.path.exists() else {"stages": {}}

    def is_done(self, key: str, h: str) -> bool:
        e = self.data["stages"].get(key)
        return bool(e and e.get("hash") == h and e.get("finished"))

    def entry(self, key: str) -> dict | None:
        return self.data["stages"].get(key)

    def mark_done(self, key: str, h: str, summary: dict, seconds: float) -> None:
        self.data["stages"][key] = {"hash": h, "finished": True, "summary": summary,
                                    "seconds": round(seconds, 3), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(self.path, self.data)

    def mark_started(self, key: str, h: str) -> None:
        """Record that a stage (with this hash) is running: not finished until mark_done."""
        self.data["stages"][key] = {"hash": h, "finished": False, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(self.path, self.data)
