"""The run directory: atomic files, JSONL, the stage manifest, rejects, resumable shards, rank sharding.

Rules (docs/design.md), each kept in one place here:
- outputs are written under a temporary name (:func:`temp_name`) and renamed into place, so a reader never
  sees half a file; temporaries of a killed write are removed at the next start (:func:`remove_stale_temps`);
  files get the umask's mode; a full disk is one :class:`DiskFullError` naming the path and the bytes free;
- a stage records a hash of (its config, its inputs) in ``manifest.json`` and is skipped when its outputs
  exist with the same hash; the manifest also records the size and content hash of every file the stage
  wrote (:func:`record_files`), checked before the files are used (:func:`verify_files`);
- randomness comes from :func:`derive_seed` (run.seed, stage, round, salt), never from process state;
- long stages write shards and resume at shard granularity;
- items that cannot be processed go to ``rejects.jsonl`` with a reason; the rejects belong to the attempt
  that made them (a shard's rejects are kept with the shard, see :func:`run_sharded`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignslm import logger

if TYPE_CHECKING:
    from alignslm.config import Config

# --------------------------------------------------------------------------------------------------
# Atomic files and JSONL
# --------------------------------------------------------------------------------------------------


TMP_SUFFIX = ".tmp"  # every temporary file or directory is ".<name>.<pid>.<random>.tmp" (see temp_name)


class DiskFullError(OSError):
    """No space left on the device: one message naming the path, the bytes free and (if known) needed."""

    def __init__(self, path: str | Path, needed: int | None = None, free: int | None = None,
                 what: str = "no space left on the device writing"):
        self.path, self.needed = Path(path), needed
        self.free = disk_free(self.path) if free is None else free
        need = f", about {_size(needed)} needed" if needed else ""
        super().__init__(errno.ENOSPC, f"{what} {self.path}: {_size(self.free)} free{need}. "
                                       "Free some space and run the same command again")

    def __str__(self) -> str:
        return self.strerror


def _size(n: int | None) -> str:
    if n is None:
        return "? bytes"
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= f:
            return f"{n / f:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


def disk_free(path: str | Path) -> int:
    """Bytes free on the file system holding ``path`` (its nearest existing ancestor)."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


@contextlib.contextmanager
def disk_errors(path: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn "no space left" (ENOSPC/EDQUOT, or any write error on a full device) into a DiskFullError
    naming the file the error names, else ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or _full(path):
            raise DiskFullError(getattr(e, "filename", None) or path, needed) from e
        raise


def _full(path: str | Path) -> bool:
    try:
        return disk_free(path) < 64 * 2**10  # libraries that hide errno (libsndfile) fail like this
    except OSError:
        return False


def temp_name(path: str | Path) -> Path:
    """A fresh temporary name next to ``path``; :func:`remove_stale_temps` recognises it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def _temp_pid(name: str) -> int | None:
    parts = name.split(".")
    if len(parts) >= 4 and name.startswith(".") and name.endswith(TMP_SUFFIX) and parts[-3].isdigit():
        return int(parts[-3])
    return None


def remove_stale_temps(root: str | Path, *, only_dead: bool = False) -> int:
    """Remove the temporary files and directories killed writes left under ``root``; return how many.

    ``only_dead``: keep those of a process still alive on this machine (a cache other runs share).
    """
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *dirnames]:
            if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
                continue
            pid = _temp_pid(name)
            if only_dead and (pid is None or _alive(pid)):
                continue
            p = Path(dirpath) / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            n += 1
        dirnames[:] = [d for d in dirnames if not (d.startswith(".") and d.endswith(TMP_SUFFIX))]
    if n:
        logger.info("removed %d temporary file(s) left by an interrupted write under %s", n, root)
    return n


def umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync and rename it into place.

    The file is created with the umask's mode (0666 & ~umask), like ``open(path, "w")`` would.
    """
    path = Path(path)
    with disk_errors(path, needed):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_p = temp_name(path)
        os.close(os.open(tmp_p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            yield tmp_p
            with open(tmp_p, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp_p, path)
        finally:
            if tmp_p.exists():
                tmp_p.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it replaces ``path`` (a reader sees the old
    directory or the new one, or -- only between two renames -- none)."""
    path = Path(path)
    with disk_errors(path):
        tmp = temp_name(path)
        tmp.mkdir(parents=True)
        try:
            yield tmp
            mode = 0o666 & ~umask()  # some writers (safetensors) create 0600 files
            for f in tmp.rglob("*"):
                if f.is_file() and not f.is_symlink():
                    f.chmod(mode)
            if path.exists():
                old = temp_name(path)
                path.rename(old)
                shutil.rmtree(old)
            tmp.rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_torch(path: str | Path, obj: Any) -> None:
    """``torch.save`` atomically, with bytes that depend on the content only, so a resumed run writes the
    same file: through a file object (the archive inside is not named after the temporary file), and with
    the containers rebuilt and the strings interned (pickle shares objects it has seen: a key loaded from
    a checkpoint is another object than the same literal, and would be written differently)."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(_canonical(obj), f)


def _canonical(o: Any) -> Any:
    if isinstance(o, str):
        return sys.intern(str(o))
    if isinstance(o, dict):
        out = type(o)((_canonical(k), _canonical(v)) for k, v in o.items())
        if hasattr(o, "_metadata"):  # a module state_dict's per-module versions
            out._metadata = _canonical(o._metadata)
        return out
    if type(o) in (list, tuple):
        return type(o)(_canonical(v) for v in o)
    return o


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


def relative_path(path: str | Path, base: str | Path) -> str:
    """``path`` relative to ``base`` when it lies inside it (a run directory moves), else absolute."""
    p, b = Path(path).absolute(), Path(base).absolute()
    try:
        return p.relative_to(b).as_posix()
    except ValueError:
        return str(p)


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


STAMP = ".hash"  # the driver's record of the hash an output directory was written for


def file_digest(path: str | Path) -> str:
    """SHA-256 (first 128 bits, hex) of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def record_files(root: str | Path) -> dict[str, list]:
    """Relative path -> [size, content hash] of every file under ``root`` (not temporaries, not the stamp)."""
    root = Path(root)
    out: dict[str, list] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.endswith(TMP_SUFFIX))
        for name in sorted(filenames):
            if name == STAMP or (name.startswith(".") and name.endswith(TMP_SUFFIX)):
                continue
            f = Path(dirpath) / name
            out[f.relative_to(root).as_posix()] = [f.stat().st_size, file_digest(f)]
    return out


def verify_files(root: str | Path, files: dict[str, list]) -> str | None:
    """None when every recorded file under ``root`` has its size and content hash; else what is wrong with
    the first one that does not (``<file> is missing|truncated|altered ...``)."""
    root = Path(root)
    for rel, (size, digest) in files.items():
        f = root / rel
        if not f.is_file():
            return f"{f} is missing"
        n = f.stat().st_size
        if n != size:
            what = "truncated" if n < size else "longer than it was written"
            return f"{f} is {what} ({n} bytes, {size} were written)"
        if file_digest(f) != digest:
            return f"{f} was altered (same size, different content)"
    return None


def derive_seed(run_seed: int, stage: str, round_: int | None, *salt: Any) -> int:
    """The one seed derivation: a 32-bit seed from (run.seed, stage, round, salt...), e.g. salt = a shard,
    an item id or a purpose ("kmeans").  Never from process state, so a resumed run draws what an
    uninterrupted one does."""
    return int(hash_str(str(run_seed), stage, str(round_), *map(str, salt))[:8], 16)


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

    Idempotent per item: the ids already in the file are read back on opening, and adding an id that is
    listed already writes nothing and is not counted again.  The first reason given for an item is kept.
    The driver starts every attempt of a stage with no rejects file; :func:`run_sharded` keeps each shard's
    rejects with the shard (:meth:`capture`) and gives them back (:meth:`replay`) when the shard is reused,
    so the rejects are those of the attempt that made the outputs, never stale ones.
    """

    def __init__(self, path: str | Path, stage: str):
        self.path = Path(path)
        self.stage = stage
        self.count = 0
        self.reasons: dict[str, int] = {}
        self._ids: set[str] = set()
        self._captures: list[list[dict]] = []
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
        self._write({"stage": self.stage, "id": item_id, "reason": reason, **extra})
        logger.warning("%s: rejected %s: %s", self.stage, item_id, reason)

    def replay(self, rows: Iterable[dict]) -> None:
        """Record rows an earlier attempt captured (quietly; ids listed already are skipped)."""
        for row in rows:
            if str(row["id"]) not in self._ids:
                self._write(row)

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[dict]]:
        """Collect the rows added inside the block (and still record them as usual)."""
        rows: list[dict] = []
        self._captures.append(rows)
        try:
            yield rows
        finally:
            self._captures = [c for c in self._captures if c is not rows]  # by identity: nested blocks

    def _write(self, row: dict) -> None:
        self._count(str(row["id"]), str(row.get("reason", "")))
        for rows in self._captures:
            rows.append(row)
        with disk_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = False  # a crash may have left a last line without its newline: start on a fresh line
            if self.path.is_file() and self.path.stat().st_size > 0:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    torn = f.read(1) != b"\n"
            with open(self.path, "a") as f:
                f.write(("\n" if torn else "") + json.dumps(row, default=_json_default) + "\n")

    def summary(self) -> dict:
        return {"rejects": self.count, "reject_reasons": dict(self.reasons)}


# --------------------------------------------------------------------------------------------------
# Stage context and resumable shards
# --------------------------------------------------------------------------------------------------


@dataclass
class StageContext:
    """What a stage function receives. ``out`` is its own directory; it writes only there."""

    name: str
    cfg: Config
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
        """This stage's seed for ``salt`` (see :func:`derive_seed`)."""
        return derive_seed(self.cfg.run.seed, self.name, self.round, *salt)

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

    Shard i is handled by rank ``i % world`` and written atomically to ``out/shards/<out_name>.NNNNN``,
    after the rejects its items made (``out/shards.rejects/<out_name>.NNNNN``); existing shards are not
    redone, and their rejects are recorded again for this attempt.  Rank 0 merges all shards, in order,
    into ``out/<out_name>`` and returns the merged rows (other ranks return their own rows).
    """
    shard_dir = ctx.out / "shards"
    rej_dir = ctx.out / "shards.rejects"
    shard_dir.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-len(items) // max(1, shard_size)))
    mine = [i for i in range(n_shards) if i % ctx.world == ctx.rank]
    todo = [i for i in mine if not (shard_dir / f"{out_name}.{i:05d}").exists()]
    if len(todo) < len(mine):
        logger.info("%s: resuming, %d of %d shards already done", ctx.name, len(mine) - len(todo), len(mine))
    for i in mine:
        if i not in todo and (rej_dir / f"{out_name}.{i:05d}").is_file():
            ctx.rejects.replay(read_jsonl(rej_dir / f"{out_name}.{i:05d}"))
    rows_mine: list[dict] = []
    for i in ctx.tqdm(todo, desc=f"{ctx.name} shards", total=len(todo)):
        chunk = list(items[i * shard_size:(i + 1) * shard_size])
        with ctx.rejects.capture() as rejected:
            rows = process(chunk)
        write_jsonl(rej_dir / f"{out_name}.{i:05d}", rejected)
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
    """``manifest.json``: stage key -> {hash, finished, summary, seconds, files}.

    ``files``: relative path (under the stage's directory) -> [size, content hash] of every file the stage
    wrote, recorded when it finished and checked (:meth:`problem`) before its outputs are trusted.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "manifest.json"
        self.data: dict = read_json(self.path) if self.path.exists() else {"stages": {}}

    def is_done(self, key: str, h: str) -> bool:
        e = self.data["stages"].get(key)
        return bool(e and e.get("hash") == h and e.get("finished"))

    def entry(self, key: str) -> dict | None:
        return self.data["stages"].get(key)

    def problem(self, key: str) -> str | None:
        """What is wrong with the files finished stage ``key`` wrote (None: all there, as written)."""
        e = self.entry(key) or {}
        if "files" not in e:
            return None  # finished before files were recorded: nothing to compare with
        return verify_files(self.run_dir / key, e["files"])

    def mark_done(self, key: str, h: str, summary: dict, seconds: float) -> None:
        self.data["stages"][key] = {"hash": h, "finished": True, "summary": summary,
                                    "seconds": round(seconds, 3), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                    "files": record_files(self.run_dir / key)}
        write_json(self.path, self.data)

    def mark_started(self, key: str, h: str) -> None:
        """Record that a stage (with this hash) is running: not finished until mark_done."""
        self.data["stages"][key] = {"hash": h, "finished": False, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(self.path, self.data)


def policy_adapters(run_dir: str | Path, round_n: int) -> list[Path]:
    """Adapters to load on the base unit LM for the policy after round ``round_n`` (0 = the base)."""
    if round_n <= 0:
        return []
    return [Path(run_dir) / f"round-{round_n}" / "train"]
