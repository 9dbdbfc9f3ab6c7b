"""How many CPU threads torch uses, and how its OpenMP threads wait, on machines shared with other work.

Owns `OMP_ENV` (set by the CLI before torch loads: idle OpenMP threads sleep instead of spinning) and
`choose_threads`: an explicit count wins; 0 means the CPUs this process may use minus those other
processes are busy on right now (a short /proc/stat sample), never more than torch's own default.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import MutableMapping

logger = logging.getLogger(__name__)

# libgomp reads these once, when torch loads it. PASSIVE: a thread waiting at a barrier sleeps instead of
# spinning, so it does not steal the core that a busy neighbour (or our own lagging thread) needs.
OMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
BUSY_SAMPLE_S = 0.25  # seconds of /proc/stat sampled to see how busy the other processes keep our CPUs
_STAT = "/proc/stat"
_last_set: tuple[int, int] | None = None  # (torch's thread count before lrl set it, the count lrl set)


def set_openmp_env(environ: MutableMapping[str, str] = os.environ) -> None:
    """Put `OMP_ENV` into `environ` where the user has not set those variables; a no-op once torch is loaded."""
    for key, value in OMP_ENV.items():
        environ.setdefault(key, value)


def allowed_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def _cpu_ticks(cpus: set[int]) -> tuple[int, int]:
    """(busy, total) jiffies summed over the `cpuN` lines of /proc/stat for the CPUs in `cpus`."""
    busy = total = 0
    with open(_STAT, encoding="ascii") as f:
        for line in f:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                continue
            v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(v)
            busy += sum(v) - v[3] - v[4]  # steal counts as busy: the hypervisor gave that time to someone else
    return busy, total


def busy_cpus(sample_s: float = BUSY_SAMPLE_S) -> float | None:
    """How many of our CPUs other processes keep busy, averaged over `sample_s` seconds (this process's own
    CPU time subtracted); None where /proc/stat cannot be read (not Linux)."""
    try:
        cpus = os.sched_getaffinity(0)
        b0, t0 = _cpu_ticks(cpus)
        own0, wall0 = sum(os.times()[:2]), time.monotonic()
        time.sleep(sample_s)
        b1, t1 = _cpu_ticks(cpus)
        own1, wall1 = sum(os.times()[:2]), time.monotonic()
    except (AttributeError, OSError, ValueError, IndexError):
        return None
    if t1 <= t0:
        return None
    busy = (b1 - b0) / (t1 - t0) * len(cpus) - (own1 - own0) / max(wall1 - wall0, 1e-3)
    return min(max(busy, 0.0), float(len(cpus)))


def choose_threads(requested: int, *, cpus: int | None = None, busy: float | None = None,
                   ceiling: int | None = None) -> tuple[int, str]:
    """Torch intra-op threads for this process, and the reason. `requested` > 0 wins; 0 = automatic: the
    `cpus` allowed (default: the affinity mask) minus the `busy` ones other processes use (default: sampled
    now), rounded, at least 1 and at most `ceiling` (torch's default thread count)."""
    if requested < 0:
        raise ValueError(f"threads must be >= 0 (0 = automatic), got {requested}")
    if requested:
        return requested, f"threads={requested} set explicitly"
    cpus = cpus if cpus is not None else allowed_cpus()
    top = min(cpus, ceiling) if ceiling else cpus
    busy = busy if busy is not None else busy_cpus()
    if busy is None:
        return top, f"{cpus} CPUs allowed, their load unknown (no {_STAT}): {top}"
    n = max(1, min(top, int(cpus - busy + 0.5)))
    return n, f"{cpus} CPUs allowed, {busy:.1f} busy with other processes: {n} (at most {top})"


def set_torch_threads(requested: int) -> tuple[int, str]:
    """Apply `choose_threads(requested)` to torch (imported here) and log the choice at info."""
    import torch

    global _last_set
    ceiling = torch.get_num_threads()  # torch's default, or what the caller set: automatic never goes above it
    if _last_set is not None and ceiling == _last_set[1]:
        ceiling = _last_set[0]  # lrl set the current count itself: the ceiling is the one before that
    n, reason = choose_threads(requested, ceiling=ceiling)
    torch.set_num_threads(n)
    _last_set = (ceiling, n)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE" and n > 1:
        reason += ", OpenMP threads spin while waiting (OMP_WAIT_POLICY unset: the lrl command sets PASSIVE)"
    logger.info("torch threads: %d (%s)", n, reason)
    return n, reason
