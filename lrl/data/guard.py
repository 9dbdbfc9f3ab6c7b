"""What keeps a preparation run from harming other files and processes: the lock on an output directory (one
writer at a time), the marker that says a directory is a dataset lrl wrote (and so may replace), publishing a
finished DIR.tmp-<pid> by rename (and removing those of killed runs), and decoding workers that die with their
parent (through lrl.core.procs, which also turns SIGTERM into Ctrl-C).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

from lrl.core import locks
from lrl.core.io import atomic_write_text
from lrl.core.procs import parent_death_hook

logger = logging.getLogger(__name__)

# Written into every directory `prepare` publishes; only a directory holding it may be replaced (--overwrite).
PREPARED_MARKER = ".lrl-prepared"
LOCK_SUFFIX = ".lock"  # OUT.lock beside OUT, held while a run writes OUT; removed at the end


def write_marker(directory: Path, fmt: int) -> None:
    atomic_write_text(directory / PREPARED_MARKER,
                      json.dumps({"written_by": "lrl data prepare", "format": fmt}) + "\n")


def is_marked(directory: Path) -> bool:
    return (directory / PREPARED_MARKER).is_file()


@contextlib.contextmanager
def output_lock(out: Path, command: str = "data prepare") -> Iterator[None]:
    """Hold OUT.lock (beside OUT, removed at the end) while the body runs; a second run on the same OUT fails
    at once (lrl.core.locks). Failing rather than waiting: the second run was started with its own options,
    and after a wait it would either reuse the first run's output or replace it, and the user could not tell
    which."""
    path = out.parent / f"{out.name}{LOCK_SUFFIX}"
    with locks.exclusive(path, f"`lrl {command}`, pid {os.getpid()}", remove=True, busy=lambda holder: (
            f"{out} is being written by another run ({holder}; lock {path}): wait for it to finish, or choose "
            "another --out")):
        yield


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(out: Path) -> None:
    """Remove DIR.tmp-<pid> / DIR.old-<pid> left by runs that were killed (their process is gone)."""
    for p in out.parent.glob(f"{out.name}.*-*"):
        kind, _, pid = p.name[len(out.name) + 1:].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
            logger.info("removing %s, left by an interrupted run", p)
            shutil.rmtree(p, ignore_errors=True)


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`, replacing an `out` already there (moved aside first, then removed)."""
    if out.exists():
        old = out.parent / f"{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def worker_init(parent_pid: int) -> None:
    """Initializer of a decoding worker: die with the parent (kill -9 of the parent leaves no orphan holding
    memory and writing into a dead run's directory). Linux: the kernel sends SIGKILL when the parent exits
    (prctl PR_SET_PDEATHSIG); the parent may have died before that call, so its pid is checked after it.
    SIGTERM goes back to its default (a worker forked while the parent's handler was installed must not
    raise KeyboardInterrupt into the pool's pipes)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    hook = parent_death_hook(parent_pid)
    if hook is not None:
        hook()
    elif os.getppid() != parent_pid:
        os._exit(1)


def stop_workers(workers) -> None:
    """Kill worker processes (multiprocessing.Process) now: used when the run is failing or interrupted,
    so that no worker goes on decoding, or writes into a directory that is being removed."""
    for p in workers:
        with contextlib.suppress(Exception):
            p.kill()
    for p in workers:
        with contextlib.suppress(Exception):
            p.join(timeout=5)
