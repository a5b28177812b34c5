"""What `Trainer.fit` writes while it trains: a tqdm bar (steps/s and the main stats), a CSV row per
logged step (flushed at once, so nothing written before a crash is lost), TensorBoard scalars when
tensorboard is installed, and sample PNGs every N steps through ganfast.viz when it is there."""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

log = logging.getLogger("ganfast.train")

BAR_KEYS = ("d_loss", "g_loss", "penalty", "real_acc", "fake_acc")


def _fmt(v: float) -> str:
    return repr(float(v))  # repr round-trips a float exactly


class TrainLogger:
    """csv_path / tensorboard_dir may be None (off). `resume_step`: rows of an existing CSV after this
    step are dropped (they belong to steps a resumed run will redo)."""

    def __init__(self, csv_path=None, tensorboard_dir=None, progress: bool = True, total: int | None = None,
                 initial: int = 0, resume_step: int | None = None):
        self.csv_path = Path(csv_path) if csv_path else None
        self._csv_file = None
        self._writer = None
        self._fields: list[str] | None = None
        if self.csv_path is not None:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            if self.csv_path.exists() and resume_step is not None:
                self._truncate_after(resume_step)
            elif self.csv_path.exists():
                self.csv_path.unlink()
        self.tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(tensorboard_dir))
            except Exception as e:  # noqa: BLE001 - tensorboard missing or broken: CSV still works
                log.info("TensorBoard logging off: %s", e)
        self.bar = None
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        with open(self.csv_path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        keep = [r for r in body if r and r[0].isdigit() and int(r[0]) <= step]
        tmp = self.csv_path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(keep)
        os.replace(tmp, self.csv_path)
        self._fields = header

    def log(self, step: int, stats: dict) -> None:
        if self.csv_path is not None:
            if self._writer is None:
                new = not self.csv_path.exists()
                if self._fields is None or new:
                    self._fields = ["step"] + list(stats)
                self._csv_file = open(self.csv_path, "a", newline="")
                self._writer = csv.writer(self._csv_file)
                if new:
                    self._writer.writerow(self._fields)
            self._writer.writerow([step] + [_fmt(stats[k]) if k in stats else "" for k in self._fields[1:]])
            self._csv_file.flush()
        if self.tb is not None:
            for k, v in stats.items():
                if math.isfinite(v):
                    self.tb.add_scalar(f"train/{k}", v, step)
        if self.bar is not None:
            self.bar.set_postfix({k: f"{stats[k]:.3g}" for k in BAR_KEYS if k in stats}, refresh=False)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)  # tqdm shows steps/s (unit="step")

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        if self.tb is not None:
            self.tb.add_text("events", text)

    def close(self) -> None:
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = None
            self._writer = None
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()


def save_samples(samples, path, real=None, nrow: int = 8) -> bool:
    """2-D points: a scatter over the real data; images (N, C, H, W): a grid. Needs ganfast.viz;
    returns False (and logs once) when it is not available."""
    try:
        from .. import viz
    except ImportError as e:
        if not getattr(save_samples, "_warned", False):
            log.info("sample images off: ganfast.viz is not available (%s)", e)
            save_samples._warned = True
        return False
    if not ((samples.dim() == 2 and samples.shape[1] == 2) or samples.dim() == 4):
        log.info("no sample plot for samples of shape %s", tuple(samples.shape))
        return False
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    viz.save_samples(path, samples, real=real, nrow=nrow)  # images on the real images' scale (image_range)
    return True


def save_curves(csv_path, out_path) -> bool:
    """The training curves of a metrics CSV as one PNG (ganfast.viz), when it is available."""
    try:
        from .. import viz
        viz.plot_training_curves(csv_path, out_path)
    except Exception as e:  # noqa: BLE001 - plotting must never fail a finished training
        log.info("no training-curve plot: %s", e)
        return False
    return True
