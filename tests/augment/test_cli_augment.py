"""`ganfast train --augment POLICY [--augment-p P|ada]`: a short image run with ADA, resumed, and the
errors of bad options."""
import csv
import json

import pytest
import torch

from ganfast.cli import main
from ganfast.train import checkpoint as ckpt

from ..test_run_cli import write_random_pngs


def test_image_run_with_ada_and_resume(tmp_path):
    folder = tmp_path / "imgs"
    write_random_pngs(folder)
    run = tmp_path / "run"
    common = ["--no-progress"]
    assert main(["train", "--data", str(folder), "--image-size", "8", "--width", "4", "--latent-dim", "8",
                 "--batch-size", "4", "--steps", "4", "--log-every", "1", "--checkpoint-every", "2",
                 "--augment", "translation,color", "--augment-p", "ada", "--out", str(run)] + common) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["augment"] == "translation,color" and cfg["augment_p"] == "ada"
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["augment_p"] != "" for r in rows)
    state, _ = ckpt.load_latest_valid(run / "checkpoints")
    assert state["config"]["augment"] == {"policy": "color,translation", "p": {"target": 0.6, "interval": 4,
                                                                               "kimg": 500.0}}
    assert torch.is_tensor(state["augment"]["p"])
    assert main(["train", "--resume", str(run), "--steps", "6"] + common) == 0


@pytest.mark.parametrize("argv, message", [
    (["--augment", "rotate"], "unknown augmentation 'rotate'"),
    (["--augment", "color", "--augment-p", "1.5"], "augment_p must be a probability in [0, 1]"),
    (["--augment", "color", "--augment-p", "often"], "augment_p must be a probability in [0, 1] or 'ada'"),
    (["--augment-p", "0.5"], "--augment-p needs --augment"),
    (["--data", "ring", "--augment", "color"], "--augment is for image data"),
])
def test_bad_augment_options(tmp_path, capsys, argv, message):
    data = [] if "--data" in argv else ["--data", "digits"]
    assert main(["train"] + data + argv + ["--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoints").exists()
