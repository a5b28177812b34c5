"""Every mistake and fault of the command line: one line on stderr that names the problem (and the way
forward), a non-zero exit where it failed, and nothing lost. Tiny models and few steps."""
import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ganfast import backends
from ganfast import run as grun
from ganfast.cli import main
from ganfast.train import Trainer
from ganfast.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--no-progress", "--width", "16", "--batch-size", "32", "--n-points", "500", "--log-every", "5",
        "--eval-every", "5", "--sample-every", "10", "--checkpoint-every", "5"]


def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _one_error(capsys, *words) -> str:
    """The single stderr line of a failed command, which must contain every word."""
    lines = _err_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("ganfast: error: "), lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _newest_step(run_dir) -> int:
    state, _ = ckpt.load_latest_valid(Path(run_dir) / "checkpoints")
    return int(state["step"])


# --- options ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--lr", "-1e-3"], ["--lr must be a positive number", "-0.001"]),
    (["--lr", "-inf"], ["--lr must be a positive number"]),
    (["--nproc", "0"], ["--nproc must be a positive integer", "got 0"]),
    (["--device", "tpu"], ["--device 'tpu'"]),
])
def test_bad_option_is_one_line(tmp_path, capsys, argv, words):
    assert main(["train", "--out", str(tmp_path / "r")] + argv + TINY) == 2
    _one_error(capsys, *words)
    assert not (tmp_path / "r").exists()


def test_negative_number_reaches_every_option(capsys):
    # only the value is attached: a real option after an option is left alone
    assert main(["train", "--no-progress", "--penalty-weight", "-1e-2"]) == 2
    _one_error(capsys, "--penalty-weight must be a finite number >= 0")


def test_device_cuda_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "--device", "cuda", "--out", str(tmp_path / "r")] + TINY) == 2
    line = _one_error(capsys, "--device cuda")
    assert ("CPU-only build" in line) if torch.version.cuda is None else ("sees no CUDA device" in line)
    assert "use --device cpu" in line
    assert not (tmp_path / "r").exists()


# --- the --out folder ------------------------------------------------------------------------------

def test_out_with_unrelated_files_is_refused(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.png").write_bytes(b"not mine")
    assert main(["train", "--out", str(folder)] + TINY) == 2
    _one_error(capsys, "already holds other files", "'cat.png'", f"--out {folder / 'run'}")
    assert sorted(p.name for p in folder.iterdir()) == ["cat.png"]  # nothing written into it
    assert (folder / "cat.png").read_bytes() == b"not mine"


def test_out_empty_folder_is_used(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    assert main(["train", "--out", str(folder), "--steps", "5"] + TINY) == 0
    assert (folder / "config.json").is_file() and _newest_step(folder) == 5


def test_read_only_out_is_one_line(tmp_path, capsys, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the folder read-only for the check instead
        real_access = os.access
        monkeypatch.setattr(grun.os, "access", lambda p, mode: False if Path(p) == parent else real_access(p, mode))
    else:
        parent.chmod(0o555)
    try:
        assert main(["train", "--out", str(parent / "run")] + TINY) == 2
        _one_error(capsys, "cannot write the run folder", str(parent), "choose another --out")
    finally:
        parent.chmod(0o755)
    assert list(parent.iterdir()) == []


def _failing_checkpoint_writes(monkeypatch, err: int, after: int):
    """Checkpoint writes after the first `after` fail like a full (ENOSPC) or read-only (EROFS) disk:
    half the file is written, then the write raises."""
    real_fdopen = os.fdopen
    calls = {"n": 0}

    class Failing:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            raise OSError(err, os.strerror(err))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, *args, **kwargs):
        calls["n"] += 1
        f = real_fdopen(fd, *args, **kwargs)
        return f if calls["n"] <= after else Failing(f)

    monkeypatch.setattr(ckpt.os, "fdopen", fdopen)


@pytest.mark.parametrize("err, words", [
    (errno.ENOSPC, ["the disk is full", "newest checkpoint is step 5", "free some space", "--resume"]),
    (errno.EROFS, ["cannot write the run folder", os.strerror(errno.EROFS)]),
])
def test_write_failure_mid_run_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch, err, words):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _failing_checkpoint_writes(m, err, after=1)  # the step-5 checkpoint is written, step 10's fails
        assert main(["train", "--out", str(run), "--steps", "15"] + TINY) == 2
        _one_error(capsys, str(run), *words)
    # nothing half-written is left, and the last good checkpoint loads
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["ckpt-000000005.pt"]
    assert _newest_step(run) == 5
    # space freed: the one command of the message continues the run to its end
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out and _newest_step(run) == 15


# --- resuming --------------------------------------------------------------------------------------

def test_run_killed_before_its_first_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_step = Trainer.step
    calls = {"n": 0}

    def killed_at_step_3(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "step", killed_at_step_3)
        with pytest.raises(KeyboardInterrupt):
            main(["train", "--out", str(run), "--steps", "10"] + TINY)
    assert (run / "config.json").is_file() and not ckpt.list_checkpoints(run / "checkpoints")
    capsys.readouterr()
    # training it again points at --resume, and --resume trains it from step 0
    assert main(["train", "--out", str(run)] + TINY) == 2
    _one_error(capsys, "already holds a run", f"--resume {run}")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "stopped before its first checkpoint" in out.out and "from step 0" in out.out
    assert _err_lines(capsys) == [] and not out.err.strip()
    assert _newest_step(run) == 10


def test_truncated_newest_checkpoint_resumes_from_the_one_used(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "15"] + TINY) == 0
    newest = run / "checkpoints" / "ckpt-000000015.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "20", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert f"resuming {run} from step 10 to step 20" in out.out
    warnings_ = [line for line in out.err.splitlines() if line.strip()]
    assert len(warnings_) == 1, warnings_  # once, and no source line
    assert warnings_[0].startswith("ganfast: warning: checkpoint") and "ckpt-000000015.pt" in warnings_[0]
    assert "falling back to the previous checkpoint" in warnings_[0] and "ckpt-000000010.pt" in warnings_[0]
    assert _newest_step(run) == 20


# --- what is installed -------------------------------------------------------------------------------

@pytest.mark.parametrize("data, module, package", [
    ("ring", "matplotlib", "matplotlib"),
    ("digits", "sklearn", "scikit-learn"),
])
def test_missing_optional_package_before_any_work(tmp_path, capsys, monkeypatch, data, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    assert main(["train", "--data", data, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    line = _one_error(capsys, package, "not installed here", f"pip install {package}")
    assert "ganfast[" not in line and ".[" not in line  # a hint must not reinstall ganfast
    assert not (tmp_path / "r").exists()


def test_train_warns_once_without_the_extension(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(backends, "_extension", None)
    monkeypatch.setattr(backends, "_extension_error", backends._not_built_reason())
    backends.status.cache_clear()
    backends._routes.clear()
    try:
        assert main(["train", "--out", str(tmp_path / "r"), "--steps", "5"] + TINY) == 0
    finally:
        monkeypatch.undo()
        backends.status.cache_clear()
        backends._routes.clear()
    lines = _err_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("ganfast: warning: no ganfast kernels for cpu tensors") and "--no-build-isolation" in lines[0]


def test_info_from_a_source_tree_without_the_extension(tmp_path):
    # `python -m ganfast` in a clone imports the clone's ganfast/, where nothing was built
    tree = tmp_path / "clone"
    shutil.copytree(ROOT / "ganfast", tree / "ganfast", ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "__pycache__"))
    (tree / "csrc").mkdir()
    (tree / "setup.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # as `python -m ganfast info`, without the finder of an editable install of another copy (which
    # would hand out that copy's ganfast._C)
    code = ("import runpy, sys; sys.meta_path[:] = [f for f in sys.meta_path if not "
            "getattr(f, '__module__', '').startswith('__editable__')]; runpy.run_module('ganfast', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code, "info"], cwd=tree, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    cpu_line = next(line for line in out.stdout.splitlines() if line.strip().startswith("cpu "))
    assert "not built in the source tree" in cpu_line and str(tree) in cpu_line
    assert "GANFAST_NO_EXT" not in cpu_line


def test_build_without_torch_fails_loudly():
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['setup.py', 'bdist_wheel']; "
            "runpy.run_path('setup.py', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "cannot be built" in out.stderr and "pip install --no-build-isolation ." in out.stderr
    assert "GANFAST_NO_EXT=1" in out.stderr


def _installs_of_ganfast(text: str) -> list[str]:
    """Every `pip install ...` in text that installs ganfast itself (".", ".[extra]", "-e .", "ganfast[...]")."""
    found = []
    for m in re.finditer(r"pip install ([^`)\n&#]*)", text):
        args = [a.strip("\"'") for a in m.group(1).split()]
        if any(a == "." or a.startswith(".[") or a.startswith("ganfast") for a in args):
            found.append(m.group(0))
    return found


def test_install_hints_keep_the_extension():
    readme = (ROOT / "README.md").read_text()
    assert len(_installs_of_ganfast(readme)) >= 3
    sources = readme + "".join(p.read_text() for p in (ROOT / "ganfast").rglob("*.py"))
    for hint in _installs_of_ganfast(sources):
        assert "--no-build-isolation" in hint, hint


# --- validate and bench ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--family", "nosuch"], ["unknown family 'nosuch'", "losses"]),
    (["--backend", "nosuch"], ["unknown backend 'nosuch'", "cpu"]),
    (["--backend", "reference"], ["validated against"]),
])
def test_validate_bad_names(capsys, argv, words):
    assert main(["validate"] + argv) == 2
    _one_error(capsys, *words)


def test_validate_unavailable_backend(capsys, monkeypatch):
    real_status = backends.status

    def status(name):
        if name == "triton":
            return backends.BackendStatus("triton", False, "triton: not installed (ImportError: no triton)")
        return real_status(name)

    monkeypatch.setattr(backends, "status", status)
    assert main(["validate", "--backend", "triton"]) == 2
    _one_error(capsys, "backend 'triton' is not available here", "not installed")


def test_bench_unknown_suite(capsys):
    assert main(["bench", "nosuch"]) == 2
    _one_error(capsys, "unknown benchmark suite 'nosuch'", "losses")


def test_bench_prints_a_progress_line_per_case(capsys, monkeypatch):
    from ganfast import bench

    def fake_suite(quick, device):
        rows = []
        for case in ("a", "b", "c"):
            for variant, t in bench.interleaved_medians({"eager": lambda: None, "cpu": lambda: None},
                                                        rounds=1, round_time=0.0, warmup=0).items():
                rows.append(bench.Row("fake", case, variant, t))
        return rows

    monkeypatch.setattr(bench, "SUITES", bench.SUITES + ("fake",))
    monkeypatch.setitem(sys.modules, "ganfast.bench.fake", type(sys)("fake"))
    sys.modules["ganfast.bench.fake"].run = fake_suite
    assert main(["bench", "fake"]) == 0
    out = capsys.readouterr()
    progress = [line for line in out.err.splitlines() if line.startswith("bench fake: timing")]
    assert len(progress) == 3 and "timing 3 done" in progress[-1] and "eager" in progress[0]
    assert "fake" in out.out and "vs eager" in out.out  # the table itself


def test_a_rank_traceback_becomes_one_line(capsys):
    from ganfast.cli import _fail
    from ganfast.train.distributed import DistributedError

    text = ("distributed run failed: rank 1 raised:\n\n-- Process 1 terminated with the following error:\n"
            "Traceback (most recent call last):\n  File \"x.py\", line 3, in f\n    g()\n"
            "ganfast.run.RunError: the disk is full: run r stopped\n")
    assert _fail(DistributedError(text)) == 2
    line = _one_error(capsys, "rank 1", "the disk is full")
    assert "Traceback" not in line
