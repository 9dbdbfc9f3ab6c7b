"""Processes that clean up after themselves: SIGTERM handled like Ctrl-C, and child processes (a pool's
workers, the KenLM tools) that die with lrl, kill -9 included. One mechanism for every stage that forks."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the body, SIGTERM raises KeyboardInterrupt in the main thread, so that `kill PID` cleans up
    (temporary directories, workers, a running KenLM tool) as Ctrl-C does. The previous handler is restored
    after. A no-op off the main thread, where Python cannot install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parent_death_hook(parent_pid: int | None = None) -> Callable[[], None] | None:
    """A function to call in a child process (a `preexec_fn`, or a pool initializer) that makes the kernel
    SIGKILL the child when its parent dies (prctl PR_SET_PDEATHSIG) and exits at once if the parent
    (`parent_pid`, default: the caller) is already gone. `prctl` is looked up here, in the parent, so the
    child only calls it. None off Linux or on a libc without prctl."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError) as e:  # pragma: no cover - a libc without prctl
        logger.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", e)
        return None
    parent = os.getpid() if parent_pid is None else parent_pid

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return hook
