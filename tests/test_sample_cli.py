"""`ganfast sample -o`: FILE.npy an array (as before), FILE.png one picture, DIR/ one PNG per image;
and an image-folder run that streams the folder and resumes it exactly."""
import numpy as np
import pytest
import torch
from PIL import Image

from ganfast.cli import main
from ganfast.train import checkpoint as ckpt

from .test_run_cli import write_random_pngs


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imgrun")
    folder = tmp / "imgs"
    write_random_pngs(folder)
    run = tmp / "run"
    (tmp / "threads").write_text(str(torch.get_num_threads()))  # image runs keep the process's thread count
    assert main(["train", "--data", str(folder), "--image-size", "8", "--width", "4", "--latent-dim", "8",
                 "--batch-size", "4", "--steps", "4", "--sample-every", "4", "--checkpoint-every", "2",
                 "--out", str(run), "--no-progress"]) == 0
    return run


def test_sample_writes_an_array_a_grid_or_one_png_per_image(image_run, tmp_path, capsys):
    assert main(["sample", str(image_run), "-n", "5", "-o", str(tmp_path / "x.npy")]) == 0
    assert np.load(tmp_path / "x.npy").shape == (5, 3, 8, 8)
    assert main(["sample", str(image_run), "-n", "5", "-o", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size[0] > 5 * 8
    assert main(["sample", str(image_run), "-n", "3", "-o", str(tmp_path / "each") + "/"]) == 0
    files = sorted(p.name for p in (tmp_path / "each").iterdir())
    assert files == ["sample-000000.png", "sample-000001.png", "sample-000002.png"]
    assert Image.open(tmp_path / "each" / files[0]).size == (8, 8)
    x = np.load(tmp_path / "x.npy")  # the same seed: the per-image PNGs are the array's first images
    png = np.asarray(Image.open(tmp_path / "each" / files[0]), dtype=np.float32).transpose(2, 0, 1)
    assert np.abs(png - np.round((np.clip(x[0], -1, 1) + 1) * 127.5)).max() <= 1
    capsys.readouterr()
    assert main(["sample", str(image_run), "-o", str(tmp_path / "x.txt")]) == 2
    assert "-o must name a .npy file, a .png file or a folder" in capsys.readouterr().err


def test_an_image_folder_run_streams_and_records_its_loader_position(image_run):
    state = ckpt.load_latest_valid(image_run / "checkpoints")[0]
    # 12 images, batches of 4: step 4 is one batch into the second epoch
    assert state["data"]["kind"] == "loader" and (state["data"]["epoch"], state["data"]["batches"]) == (1, 1)


def test_an_empty_image_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "no readable images found" in capsys.readouterr().err


def test_points_cannot_go_one_png_per_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--steps", "2", "--out", str(run), "--no-progress", "--n-points", "500",
                 "--batch-size", "64", "--checkpoint-every", "2", "--eval-every", "2", "--log-every", "1",
                 "--sample-every", "2"]) == 0
    assert main(["sample", str(run), "-n", "50", "-o", str(tmp_path / "pts.png")]) == 0
    assert (tmp_path / "pts.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["sample", str(run), "-o", str(tmp_path / "d") + "/"]) == 2
    assert "2-D points" in capsys.readouterr().err
    assert torch.load(ckpt.list_checkpoints(run / "checkpoints")[-1])["step"] == 2  # plain torch.load


def test_a_killed_image_folder_run_resumes_exactly(image_run, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    threads = torch.get_num_threads()
    torch.set_num_threads(int((image_run.parent / "threads").read_text()))  # the same reduction order
    whole = ckpt.load_latest_valid(run / "checkpoints")[0]
    (run / "checkpoints" / ckpt.checkpoint_name(4)).unlink()  # as if killed after step 2's checkpoint
    try:
        assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    again = ckpt.load_latest_valid(run / "checkpoints")[0]
    assert again["step"] == 4
    assert (again["data"]["epoch"], again["data"]["batches"]) == (whole["data"]["epoch"], whole["data"]["batches"])
    assert torch.equal(again["data"]["sampler_generator"], whole["data"]["sampler_generator"])
    for part in ("generator", "discriminator", "ema"):
        for k in whole[part]:
            assert torch.equal(whole[part][k], again[part][k]), (part, k)
