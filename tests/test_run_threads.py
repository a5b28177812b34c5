"""The thread count of an image run without --threads: the idle cores."""
import os

import pytest

from ganfast import run

read_busy_cores = run._busy_cores  # conftest replaces it for the other tests' CLI runs


@pytest.mark.parametrize("cores, busy, threads", [(2, 0.0, 2), (2, 0.3, 2), (2, 1.0, 1), (2, 1.9, 1), (2, 3.5, 1),
                                                  (16, 4.4, 12), (16, None, 8), (1, None, 1), (1, 0.0, 1)])
def test_image_runs_take_the_idle_cores(monkeypatch, cores, busy, threads):
    monkeypatch.setattr(run.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(run, "_busy_cores", lambda n: busy)
    assert run.default_image_threads() == threads


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux's /proc/stat")
def test_busy_cores_are_the_busy_fraction_of_the_cores_over_a_quarter_second():
    busy = read_busy_cores(4)  # the fraction of all CPUs' time not idle, times the cores given
    assert busy is not None and 0.0 <= busy <= 4.0 + 1e-9


def test_the_chosen_count_is_recorded_and_the_given_one_kept(monkeypatch):
    monkeypatch.setattr(run, "default_image_threads", lambda: 3)
    assert run.resolve_options(data="stacked-mnist")["threads"] == 3
    assert run.resolve_options(data="stacked-mnist", threads=1)["threads"] == 1
    assert run.resolve_options(data="ring")["threads"] == 1  # the 2-D MLPs: one thread
