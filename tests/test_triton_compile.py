"""Every Triton kernel compiles for sm_80 and sm_90, as the launchers specialize it (without a GPU).

The rest of the suite runs the kernels in the interpreter, which accepts code the compiler rejects.
The compiling runs in a subprocess without TRITON_INTERPRET (set by conftest.py for this process, and
fixed at `triton.jit` time), through tests/triton_compile_check.py; see there how to add a kernel.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests import triton_compile_check as check

pytest.importorskip("triton", reason="triton is not installed: there are no Triton kernels to compile")

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton_compile") / "result.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "tests.triton_compile_check", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if not out.exists():
        pytest.fail(f"the compile run crashed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", check.case_ids())
def test_compiles_for_sm80_and_sm90(compiled, case):
    assert case in compiled["ran"], f"{case} was not run by the compile check"
    failures = compiled["failures"].get(case, [])
    assert not failures, f"triton {compiled['triton']}:\n" + "\n\n".join(check.format_failure(case, f) for f in failures)


def test_every_jit_function_is_compiled(compiled):
    assert compiled["compiled"], "no kernel was compiled"
    assert not compiled["never_compiled"], (
        "these @triton.jit functions are compiled by no case of tests/triton_compile_check.py (add one): "
        + ", ".join(compiled["never_compiled"]))
