"""lrl.core.cpu: the thread count chosen from the CPUs free, explicit counts, the /proc/stat sample, OMP_WAIT_POLICY."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lrl.core import cpu


@pytest.mark.parametrize(
    ("cpus", "busy", "ceiling", "expected"),
    [
        (2, 0.0, None, 2),  # idle: every allowed CPU
        (2, 0.3, None, 2),  # a little background noise does not cost a thread
        (2, 1.0, None, 1),  # one busy process on 2 cores: the free one
        (2, 2.0, None, 1),  # fully busy: never fewer than 1
        (8, 2.6, None, 5),  # rounded to the nearest whole CPU
        (8, 0.0, 4, 4),  # never above torch's default (physical cores) or what the caller set
        (1, 0.0, None, 1),
    ],
)
def test_automatic_threads_follow_the_free_cpus(cpus, busy, ceiling, expected):
    n, reason = cpu.choose_threads(0, cpus=cpus, busy=busy, ceiling=ceiling)
    assert n == expected
    assert f"{cpus} CPUs allowed" in reason and f"{busy:.1f} busy" in reason


@pytest.mark.parametrize("busy", [0.0, 2.0])
def test_an_explicit_count_always_wins(busy):
    assert cpu.choose_threads(3, cpus=2, busy=busy, ceiling=2) == (3, "threads=3 set explicitly")


def test_negative_threads_are_rejected():
    with pytest.raises(ValueError, match=r"threads must be >= 0 \(0 = automatic\), got -1"):
        cpu.choose_threads(-1)


def test_unknown_load_uses_every_allowed_cpu(monkeypatch):
    monkeypatch.setattr(cpu, "busy_cpus", lambda: None)
    n, reason = cpu.choose_threads(0, cpus=4, ceiling=2)
    assert n == 2 and "load unknown" in reason


def test_cpu_ticks_sum_only_the_allowed_cpus(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  25 0 10 160 0 0 0 0 0 0\n"
        "cpu0 20 0 5 70 0 0 0 5 0 0\n"  # steal counts as busy
        "cpu1 5 0 5 90 0 0 0 0 0 0\n"
        "intr 12345\nctxt 678\n"
    )
    monkeypatch.setattr(cpu, "_STAT", str(stat))
    assert cpu._cpu_ticks({0}) == (30, 100)
    assert cpu._cpu_ticks({0, 1}) == (40, 200)


def test_busy_cpus_subtracts_this_process(monkeypatch):
    ticks = iter([(0, 0), (150, 200)])  # 75% of 2 CPUs busy over the sample
    own = iter([(1.0, 0.0, 0, 0, 0), (1.0, 0.0, 0, 0, 0)])  # and none of it ours
    monkeypatch.setattr(cpu, "_cpu_ticks", lambda cpus: next(ticks))
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(cpu.os, "times", lambda: next(own))
    assert cpu.busy_cpus(sample_s=0.01) == pytest.approx(1.5)


def test_set_openmp_env_keeps_the_users_choice():
    env: dict[str, str] = {}
    cpu.set_openmp_env(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    cpu.set_openmp_env(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_the_cli_entry_sets_the_wait_policy_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, sys; import lrl.cli; print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "PASSIVE"]


def test_set_torch_threads_applies_and_never_rises_above_the_callers_count(one_thread, monkeypatch):
    import torch

    monkeypatch.setattr(cpu, "busy_cpus", lambda: 0.0)
    monkeypatch.setattr(cpu, "_last_set", None)  # what an earlier test's training run set must not leak in
    assert cpu.set_torch_threads(0)[0] == 1  # the caller (the fixture) set 1: automatic keeps it
    assert cpu.set_torch_threads(2)[0] == 2 and torch.get_num_threads() == 2
    assert cpu.set_torch_threads(0)[0] == 1  # lrl set the 2 itself: the ceiling is still the caller's 1
