"""One writer per output: `exclusive` holds a non-blocking `flock` on a lock file while a run writes, and a
second run fails at once with the first one's note (what it is, its pid) instead of waiting for or
interleaving with it. The lock dies with its process, so a killed run never blocks the next one.

Two layouts use it: `lrl data prepare` / `merge` lock OUT.lock beside OUT (OUT itself is replaced by a rename,
so the lock cannot live inside it; the file is removed at the end), `lrl train run` / `pretrain` lock
OUT/.lrl.lock inside the run directory they add checkpoints to (the file stays).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from lrl.core.io import LrlError

NOTE_BYTES = 200  # the holder's note is read back up to this length
MAX_TRIES = 20  # a lock file removed under us this often means something else deletes it: give up


@contextlib.contextmanager
def exclusive(path: Path, note: str, busy: Callable[[str], str], remove: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) while the body runs, with `note` written into it.
    When another process holds it: LrlError(busy(its note)). `remove`: unlink the file at the end; a lock
    taken on a file that its holder removed meanwhile is taken again on the new file, so two runs never hold
    locks on two different files. Without fcntl (not POSIX) there is no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    for _ in range(MAX_TRIES):
        path.parent.mkdir(parents=True, exist_ok=True)  # (again: a failed run may have removed its new OUT)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder went between the mkdir and the open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
        except BlockingIOError:
            try:
                holder = os.pread(fd, NOTE_BYTES, 0).decode("utf-8", "replace").strip() or "another process"
            finally:
                os.close(fd)
            raise LrlError(busy(holder)) from None
        except BaseException:  # ENOLCK on some network file systems, Ctrl-C: never keep the fd (and lock) open
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
    else:
        raise LrlError(f"could not take the lock {path}: it was removed and made again {MAX_TRIES} times; "
                       "is another program deleting it?")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode(), 0)
        yield
    finally:
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.close(fd)  # releases the flock
