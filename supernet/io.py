"""Crash-safe files: atomic writes (a crash never leaves a half-written result or checkpoint
behind), append-only CSV logs (a crash loses at most the row being written) and temporary
folders that the next run removes when their owner died.

Durability: an atomic write fsyncs the file before renaming it and the folder after, and an
append fsyncs the file (and the folder when it created the file), so what a call wrote
survives a power loss once it returns, not only a crash of the process.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from supernet import faults
from supernet.errors import CheckpointError

_UMASK = os.umask(0)
os.umask(_UMASK)


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a folder's contents (a folder's: its entries, e.g. a rename) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TMP_SUFFIX = ".tmp"  # an atomic write's temporary file: ``.NAME.XXXXXXXX.tmp`` beside NAME


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it over,
    durably. A crash before the rename leaves a stray ``.NAME.*.tmp`` (``remove_stray_tmp``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should read like any file
        fsync_path(tmp)
        faults.hit("io.replace")
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stray_tmp(folder: str | Path) -> list[Path]:
    """Remove the temporary files of atomic writes that a killed process left under
    ``folder``; call it only where no other process is writing there (a locked run folder)."""
    folder = Path(folder)
    stray = [p for p in folder.rglob(f".*{TMP_SUFFIX}") if p.is_file()] if folder.is_dir() else []
    for p in stray:
        p.unlink(missing_ok=True)
    return stray


def write_together(folder: str | Path, stem: str, files: Mapping[str, Callable[[Path], object]]) -> list[Path]:
    """Write a set of files that belong together (a benchmark page and its CSVs): ``files[name](path)``
    writes each into a staging folder ``.STEM.*.tmp`` inside ``folder``, and only when all of them are
    made are they renamed into ``folder``. A crash while they are made leaves the previous set whole
    (never new tables beside an old page); a staging folder that a killed writer left is removed by
    the next call for the same stem."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f".{stem}.*{TMP_SUFFIX}"):
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=TMP_SUFFIX, dir=folder))
    try:
        for name, write in files.items():
            write(stage / name)
        paths = []
        for name in files:
            faults.hit("io.replace")
            os.replace(stage / name, folder / name)
            paths.append(folder / name)
        fsync_path(folder)
        return paths
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    def write(p: Path) -> None:
        p.write_text(text)

    return atomic_write(path, write)


def strict_json(obj: Any) -> Any:
    """``obj`` as plain JSON values: numpy scalars and arrays become Python ones, and a float
    that is not finite (NaN, infinity) becomes null, which every JSON parser reads (bare
    ``NaN`` is not JSON)."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy scalars and arrays
        return strict_json(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (``strict_json``), atomically."""
    return write_text(path, json.dumps(strict_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file this package wrote; ``CheckpointError`` naming the file (and ``what`` it
    holds) if it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} ({what}) is unreadable or not JSON: {e}") from None


def write_csv(path: str | Path, frame: Any) -> Path:
    """Write a pandas DataFrame atomically (no index)."""
    return atomic_write(path, lambda p: frame.to_csv(p, index=False))


class CsvLog:
    """An append-only CSV file of flat rows, written durably and read back whole.

    * the header is written once, by the append that creates the file (or finds it empty);
    * every ``append`` is one ``write`` of whole lines, fsync'ed before it returns, so rows
      that were appended survive a crash of the process or the machine;
    * a crash mid-write can leave a torn last line (no newline): ``read`` ignores it and the
      next ``append`` cuts it off first, so the file always parses and the next row starts on
      a line of its own.

    Rows are mappings; keys outside ``columns`` are ignored and missing ones left empty.
    """

    def __init__(self, path: str | Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)

    def read(self, **read_csv: Any) -> pd.DataFrame:
        """The complete rows as a DataFrame (``read_csv`` goes to ``pandas.read_csv``); no
        file, or no header yet, gives an empty frame with ``columns``. The file is not changed."""
        text = self.path.read_text() if self.path.exists() else ""
        text = text[: text.rfind("\n") + 1]  # drop a torn last line from a crash mid-write
        if not text:
            return pd.DataFrame(columns=self.columns)
        return pd.read_csv(io.StringIO(text), **read_csv)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append ``rows`` durably (header first when the file is new)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            # One appender at a time (Ray workers share a run's accuracy cache): the torn-tail
            # cut, the header decision and the write see the same file, so two appenders that
            # find it new do not both write the header. Closing the file releases the lock.
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.cut_torn_tail()
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
            if os.fstat(fd).st_size == 0:
                w.writeheader()
            for r in rows:
                w.writerow(r)
            data = buf.getvalue().encode()
            while data:  # os.write may write less than asked
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_path(self.path.parent)  # the new file's entry in its folder

    def cut_torn_tail(self) -> None:
        """Drop a half-written last line (a crash mid-write) so that the next append parses."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":  # the usual case: no need to read the whole file
                return
            f.seek(0)
            data = f.read()
            f.truncate(data.rfind(b"\n") + 1)


# --- A full disk ---------------------------------------------------------------------------------
# The machine's failure, not the job's: a command that meets it stops (the CLI prints one line,
# status 1) rather than recording it as a result, so the same command resumes once there is room.

_FULL = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded"}


def disk_full(e: BaseException) -> OSError | None:
    """``e`` as an OSError when it says the disk (or the user's quota) is full, else None.
    Runtimes that wrap the operating system's error in their own (ONNX Runtime, torch) are
    recognised by its message."""
    if isinstance(e, OSError) and e.errno in _FULL:
        return e
    for code, words in _FULL.items():
        if words in str(e):
            return OSError(code, words)
    return None


# --- Temporary folders ---------------------------------------------------------------------------
# ``hwnas-KIND-PID-XXXXXXXX`` in the system's temp folder, holding ``owner.lock``, which its
# process keeps locked (fcntl.flock) until it removes the folder. A folder whose lock can be
# taken (or, while it has none yet, whose PID is gone) belongs to a process that died without
# cleaning up, e.g. killed with SIGKILL: ``remove_stale_temp_dirs`` removes it, and
# ``make_temp_dir`` calls it first, so the next run cleans up after a crashed one. The lock,
# not the PID, decides, since PIDs are reused and differ across containers sharing /tmp.

TEMP_PREFIX = "hwnas-"
_OWNER = "owner.lock"
_held: dict[Path, int] = {}  # this process's temp folders -> the open, locked owner.lock


def make_temp_dir(kind: str) -> Path:
    """A new temporary folder ``hwnas-KIND-PID-*`` owned by this process (``remove_temp_dir``)."""
    remove_stale_temp_dirs()
    d = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{kind}-{os.getpid()}-"))
    fd = os.open(d / _OWNER, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _held[d] = fd
    return d


def remove_temp_dir(d: str | Path) -> None:
    """Remove a folder from ``make_temp_dir`` (and release its lock)."""
    d = Path(d)
    shutil.rmtree(d, ignore_errors=True)
    fd = _held.pop(d, None)
    if fd is not None:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale(d: Path) -> bool:
    if d in _held:
        return False
    try:
        fd = os.open(d / _OWNER, os.O_RDWR)
    except FileNotFoundError:  # just made, not locked yet; or made by an older hwnas
        pid = d.name[len(TEMP_PREFIX):].split("-")[-2]
        return pid.isdigit() and not _pid_alive(int(pid))
    except OSError:  # another user's folder
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return True


def remove_stale_temp_dirs(root: str | Path | None = None) -> list[Path]:
    """Remove the ``hwnas-*`` temporary folders (in ``root``, default the system's temp
    folder) whose owning process has died; returns them."""
    root = Path(root or tempfile.gettempdir())
    stale = [d for d in root.glob(f"{TEMP_PREFIX}*-*-*") if d.is_dir() and _stale(d)]
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)
    return stale
