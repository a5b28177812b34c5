import subprocess
import sys

from ganfast.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("ganfast", "torch", "triton", "reference", "cpu", "cuda", "auto picks", "cpu tensors ->"):
        assert word in out
    from ganfast import backends
    if backends.status("cpu").available:  # the copy in use and the non-temporal threshold
        import torch
        cpu = torch.ops.ganfast_cpu
        assert f"cpu kernels: the {cpu.capability()} copy" in out
        assert f"gradients of {cpu.nontemporal_min_bytes() / 2**20:g} MiB or more" in out
        assert f"W/sigma of {2 * cpu.nontemporal_min_bytes() / 2**20:g} MiB or more" in out


def test_validate_losses_passes(capsys):
    assert main(["validate", "--family", "losses", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "d_loss[rahinge]" in out and "failed" in out and " 0 failed" in out


def test_validate_reports_a_wrong_kernel(monkeypatch, capsys):
    # A kernel that is off by a little must fail validation and make the command exit non-zero.
    from ganfast.ops import losses as ops_losses
    real_gan_loss = ops_losses.gan_loss

    def wrong(real, fake, kind_id, generator, backend):
        loss, stats = real_gan_loss(real, fake, kind_id, generator, backend)
        return loss * 1.001, stats

    monkeypatch.setattr(ops_losses, "gan_loss", wrong)
    assert main(["validate", "--family", "losses"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "ganfast", "info"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "backends:" in out.stdout
