"""`ganfast bench malloc`: its rows and report, from real child processes (one round of two steps)."""
import platform

import pytest
import torch

from ganfast.bench import malloc

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the malloc settings are glibc's")


def test_children_and_report(capsys):
    results = malloc.run_children(quick=True, rounds=1, steps=2)
    assert set(results) == {"default", "kept"}
    for variant, (one,) in results.items():
        assert one["case"].startswith("DCGAN") and one["median_s"] > 0 and one["faults_per_step"] >= 0
    # the kept memory is not faulted back in (the defaults: thousands a step on this case, when they do)
    assert results["kept"][0]["faults_per_step"] < 1000, results
    text = malloc.report(results)
    assert "eager-kept-memory" in text and "minor faults a step" in text and "as fast" in text


def test_suite_skips_other_devices_and_a_chosen_allocator(capsys, monkeypatch):
    assert malloc.run(quick=True, device=torch.device("meta")) == []
    assert "skipped (the device is meta)" in capsys.readouterr().out
    monkeypatch.setenv("LD_PRELOAD", "libjemalloc.so.2")
    assert malloc.run(quick=True) == []
    assert "jemalloc is preloaded" in capsys.readouterr().out
