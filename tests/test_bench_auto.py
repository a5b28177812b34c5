"""The auto check of `ganfast bench`: which row auto runs, and the cases where another choice was faster."""
import torch

from ganfast import backends
from ganfast.bench import Row, auto_misses, format_rows, mark_auto


def _rows(case, **seconds):
    return [Row("losses", case, variant.replace("_", "-"), t) for variant, t in seconds.items()]


def test_mark_auto_marks_the_backend_auto_resolves_to(monkeypatch):
    rows = _rows("c", eager=2.0, compiled=1.0, cpu=1.5)
    t = torch.empty(100)
    mark_auto(rows, "c", "losses", t)
    expected = "eager" if backends.resolve(t.device, "losses", t.dtype, 100) == "reference" else "cpu"
    assert [r.variant for r in rows if r.auto] == [expected]
    if "cpu" in backends.available_backends("cpu"):  # a size limit sends this size to the reference
        monkeypatch.setitem(backends.SIZE_LIMITS, ("losses", "cpu", "cpu"), (1000, 10_000))
        backends._routes.clear()
        try:
            rows = _rows("c", eager=2.0, cpu=1.5)
            mark_auto(rows, "c", "losses", t)
            assert [r.variant for r in rows if r.auto] == ["eager"]
        finally:
            backends._routes.clear()


def test_auto_misses_names_a_faster_choice_and_ignores_compile():
    fast = _rows("a", eager=2.0, compiled=0.5, cpu=1.0)  # compile is not a choice of auto
    slow = _rows("b", eager=1.0, cpu=1.2)
    noise = _rows("n", eager=1.0, cpu=1.04)  # within the tolerance
    named = _rows("s", eager=1.0, ganfast_cpu=2.0, ganfast_cpu_multi=0.1)
    for rows, variant in ((fast, "cpu"), (slow, "cpu"), (noise, "cpu"), (named, "ganfast-cpu")):
        next(r for r in rows if r.variant == variant).auto = True
    misses = auto_misses(fast + slow + noise + named)
    assert len(misses) == 2
    assert misses[0].startswith("b: auto runs cpu, 1.20x the time of eager")
    assert misses[1].startswith("s: auto runs ganfast-cpu, 2.00x the time of eager")
    table = format_rows(fast + slow)
    assert "<- auto" in table and "1 case(s) where another choice was faster" in table


def test_no_auto_line_without_marked_rows():
    assert "auto check" not in format_rows(_rows("a", eager=1.0, cpu=2.0))
