"""What `ganfast train / eval / sample / explore` do, as functions (cli.py only parses arguments).

A run folder holds everything needed to rebuild and continue a run:

    RUN/config.json          every option (resolved defaults included), the data's shape, the latent size
    RUN/checkpoints/         ckpt-<step>.pt (atomic, verified; the newest few are kept)
    RUN/metrics.csv          the logged steps: losses, D's logits, grad norms, sigma, lr, and for the
                             mixtures modes_captured / hq_fraction / reverse_kl every eval_every steps
    RUN/samples/             step-<step>.png: samples of the (EMA) generator over training
    RUN/curves.png           the training curves
    RUN/summary.json         the final metrics, steps/s, wall time
    RUN/explore/             written by `ganfast explore`

The 2-D default (the 8-Gaussian ring, std 0.01) was chosen by measurement: see RING_DEFAULTS.
"""
from __future__ import annotations

import errno
import importlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from . import backends
from .data import DATASETS, MIXTURES, MNIST_FAMILY, Dataset, make_dataset, _ALIASES
from .metrics import N_EVAL_SAMPLES, mode_metrics
from .models import ARCHS, build_models
from .train import Trainer
from .train import checkpoint as ckpt
from .train.probe import pack_samples
from .train import distributed
from .augment import parse_policy
from .train.augment import checked_p as augment_checked_p
from .train.config import PENALTIES, StepConfig, cli_name

__all__ = ["RunError", "Run", "resolve_options", "prepare", "train", "load_run", "evaluate", "sample", "explore",
           "RING_DEFAULTS", "POINT_DEFAULTS", "IMAGE_DEFAULTS"]

CONFIG_VERSION = 1
PENALTY_CHOICES = ("none",) + tuple(p for p in PENALTIES if p is not None)

# The default for the mixtures, measured on the ring (std 0.01; seeds 0-5 all 8/8 modes and 94-97%
# high-quality samples; about a minute on a shared 2-core CPU, one thread): a plain MLP D, the
# non-saturating loss with a small R1 (gamma 0.1) for local convergence, Adam(lr 2e-3, betas (0.5, 0.9))
# to find all modes fast, and precision (3 std = 0.03 is tight) from the EMA of G plus a linear
# learning-rate decay to 0 over the second half. Spectral norm is off: it makes the small MLP D too
# smooth to hold modes 0.03 wide. Measured alternatives (seed 0, 3000 steps, lr 1e-3, beta2 0.99): the
# same at 93-95% HQ, latent 8: 90%, width 64: 88%, hinge: 91%, rpgan: 95%, gamma 0.01 / 1.0: 95%;
# the raw G (no EMA) stays at 10-80% HQ until the lr has decayed.
RING_DEFAULTS = dict(loss="ns", penalty="r1", penalty_weight=0.1, penalty_interval=1, d_steps=1, sn=False,
                     steps=2500, batch_size=256, lr=2e-3, beta1=0.5, beta2=0.9, lr_decay=0.5, ema=0.995,
                     latent_dim=2, width=128, arch=None, image_size=None, channels=None, n_points=20000,
                     threads=1, log_every=10, eval_every=250, sample_every=500, checkpoint_every=1000,
                     conditional=False)
POINT_DEFAULTS = RING_DEFAULTS
# grid25 (25 modes, std 0.05): the same recipe needs twice the steps (seed 0: 2500 steps 24/25 modes,
# 35% HQ; 5000 steps 25/25, 90% HQ, reverse KL 0.009, 75 s)
# MNIST and Stacked MNIST (ganfast.mnist, 28x28 padded to 32x32), scored by ganfast.image_metrics
# (modes and KL of the reference classifier's labels): see MNIST_DEFAULTS below.
DATA_DEFAULTS = {"grid25": dict(steps=5000)}
# Images: DCGAN-style models with R1 (the StyleGAN2 / Mescheder et al. recipe), Adam(0, 0.99), EMA of G
# whose half-life ramps up with the steps done (StyleGAN2-ADA's ema_rampup 0.05). Without the ramp the
# EMA (half-life 693 steps) still held most of the random start in the first sample grids: a
# conditional DCGAN on a folder of 900 digits drew gray noise at step 400 with it, each class's digit
# with the ramp.
IMAGE_DEFAULTS = dict(loss="ns", penalty="r1", penalty_weight=1.0, penalty_interval=1, d_steps=1, sn=False,
                      steps=5000, batch_size=64, lr=2e-4, beta1=0.0, beta2=0.99, lr_decay=0.0, ema=0.999,
                      ema_rampup=0.05,
                      latent_dim=None, width=None, arch="dcgan", image_size=None, channels=3, n_points=None,
                      threads=None, log_every=10, eval_every=500, sample_every=500, checkpoint_every=1000,
                      conditional=False)


# MNIST and Stacked MNIST: DCGAN width 32 at 32x32 (the digits padded), the non-saturating loss with a
# small R1 (gamma 1), Adam(2e-4, (0.5, 0.99)), batch 64, an EMA of G (0.999) whose half-life ramps up
# with the steps done (ema_rampup 0.05: early evaluations are not an average with the random start).
# Modes/KL/classifier FD every eval_every steps on eval_samples samples, 26,000 at the end. Measured
# on Stacked MNIST: see the README's MNIST section (pack and the figures per seed).
MNIST_DEFAULTS = dict(arch="dcgan", width=32, loss="ns", penalty="r1", penalty_weight=1.0, ema=0.999,
                      ema_rampup=0.05, lr=2e-4, beta1=0.5, beta2=0.99, batch_size=64, steps=10000, eval_every=1000,
                      log_every=50, sample_every=1000, checkpoint_every=1000, eval_samples=10000)
# Stacked MNIST: pack 2 (without it the recipe collapsed), lr 5e-4 and a linear decay to 0 over the
# second half of 20000 steps (23 min on the two idle cores of a 2-core machine, 35 min on one), R1
# gamma 0.1. 20000 steps against 14000: seed 4 KL 0.138 -> 0.094, seed 2 0.104 -> 0.068. Seed 0 at
# 26k samples, 14000 steps: lr 2e-4 999 modes / KL 0.32 (one channel's digits stuck), 5e-4 1000 /
# 0.087, 1e-3 1000 / 0.090. R1 gamma 0.1 against 1 at lr 5e-4, seeds 0-2: KL 0.168 / 0.100 / 0.066
# against 0.087 / 0.315 / 0.190. Every seed and the other recipes tried: the README's "The Stacked
# MNIST default, measured".
# DiffAugment's color transforms on what D sees (--augment color) kept every channel drawing digits on
# seeds 0-3, where without them one channel of some seeds drew broken strokes to the end (KL 0.168 on
# seed 0): the README's "The Stacked MNIST default, measured".
DATA_DEFAULTS["stacked-mnist"] = dict(MNIST_DEFAULTS, channels=3, pack=2, lr=5e-4, lr_decay=0.5, steps=20000,
                                      penalty_weight=0.1, augment="color")
DATA_DEFAULTS["mnist"] = dict(MNIST_DEFAULTS, channels=1)


def _busy_cores(cores: int) -> float | None:
    """Cores busy with other work now: Linux's /proc/stat over a quarter second (the load average
    lags a minute behind a job that just ended), else the 1-minute load average; None if neither."""
    def ticks():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait
    try:
        total0, idle0 = ticks()
        time.sleep(0.25)
        total1, idle1 = ticks()
        if total1 > total0:
            return cores * (1 - (idle1 - idle0) / (total1 - total0))
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def default_image_threads() -> int:
    """torch threads of an image run when --threads is not given: the idle cores, at least 1 (half
    the cores where the load cannot be read). torch's threads meet at the end of every op, so a core
    taken by another process stalls all of them: digits training with one busy background process
    ran at 4.6 steps/s on all cores and 15 on one thread. Idle, Stacked MNIST's default trains at
    14.8 steps/s on both cores of a 2-core machine against 9.6 on one."""
    cores = os.cpu_count() or 1
    busy = _busy_cores(cores)
    if busy is None:
        return max(1, cores // 2)
    return max(1, min(cores, cores - round(busy)))
# options that describe the run itself (a resumed run keeps them); the others only say how to execute it
RUN_KEYS = tuple(RING_DEFAULTS) + ("data", "seed")
# run options added after config version 1, with the value a run written without them had
LATER_KEYS = {"pack": 1, "data_dir": None, "eval_samples": None, "ema_rampup": None, "d_width": None,
              "mbstd_group": 0}
EXEC_KEYS = ("backend", "device", "progress")


class RunError(ValueError):
    """A bad option or an unusable run folder; the message says which and why."""


def _data_key(data: str) -> str:
    return _ALIASES.get(str(data).lower(), str(data).lower())


def _data_kind(data: str) -> str:
    key = _data_key(data)
    if key in MIXTURES:
        return "points"
    if key in ("digits",) + MNIST_FAMILY or os.path.isdir(str(data)):
        return "images"
    raise RunError(f"unknown data {data!r}: give one of {', '.join(DATASETS)} or the path of an existing "
                   f"folder of images")


def resolve_options(**given) -> dict:
    """The full configuration of a new run: the given options (None = default) over the defaults for
    the data's kind. Checks every option and raises RunError naming a bad one."""
    data = given.get("data") or "ring"
    kind = _data_kind(data)
    cfg = dict(LATER_KEYS)  # a new run's values of the later keys: the kind's defaults override them
    cfg.update(POINT_DEFAULTS if kind == "points" else IMAGE_DEFAULTS)
    cfg.update(DATA_DEFAULTS.get(_data_key(data), {}))
    for k, v in given.items():
        if v is not None:
            cfg[k] = v
    cfg["data"] = data
    cfg["kind"] = kind
    if kind == "images" and cfg.get("threads") is None:
        cfg["threads"] = default_image_threads()
    cfg.setdefault("seed", 0)
    if cfg["seed"] is None:
        cfg["seed"] = 0
    cfg.setdefault("backend", "auto")
    cfg["backend"] = cfg["backend"] or "auto"
    cfg["device"] = cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.get("data_dir") is not None:
        cfg["data_dir"] = os.path.abspath(os.path.expanduser(str(cfg["data_dir"])))
    _check(cfg)
    return cfg


def step_config(cfg: dict) -> StepConfig:
    """The trainer's step options of a run configuration."""
    pen = None if cfg["penalty"] in (None, "none") else cfg["penalty"]
    return StepConfig(loss=cfg["loss"], penalty=pen, penalty_weight=cfg["penalty_weight"],
                      penalty_interval=cfg["penalty_interval"], d_steps=cfg["d_steps"], spectral_norm=cfg["sn"],
                      ema=cfg["ema"] or None, ema_rampup=(cfg.get("ema_rampup") or None) if cfg["ema"] else None,
                      pack=cfg.get("pack", 1))


def _check(cfg: dict) -> None:
    if cfg["penalty"] not in (None, "none") + PENALTIES:
        raise RunError(f"unknown penalty {cfg['penalty']!r}; valid penalties: {', '.join(PENALTY_CHOICES)}")
    try:  # the step's options, checked where the trainer checks them
        step_config(cfg).checked(cli_name)
    except ValueError as e:
        raise RunError(str(e)) from None
    if cfg["backend"] not in backends.CHOICES:
        raise RunError(f"unknown backend {cfg['backend']!r}; choose one of {', '.join(backends.CHOICES)}")
    _check_device(cfg["device"])
    _check_augment(cfg)
    for k in ("steps", "batch_size", "log_every", "eval_every", "sample_every", "checkpoint_every"):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise RunError(f"--{k.replace('_', '-')} must be a positive integer, got {v!r}")
    for k in ("latent_dim", "width", "d_width", "image_size", "threads", "n_points", "eval_samples"):
        v = cfg.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise RunError(f"--{k.replace('_', '-')} must be a positive integer, got {v!r}")
    if not (cfg["lr"] > 0 and math.isfinite(cfg["lr"])):
        raise RunError(f"--lr must be a positive number, got {cfg['lr']!r}")
    for k in ("beta1", "beta2"):
        if not 0 <= cfg[k] < 1:
            raise RunError(f"--{k} must be in [0, 1), got {cfg[k]!r}")
    if not 0 <= cfg["lr_decay"] <= 1:
        raise RunError(f"--lr-decay (the final fraction of steps over which the learning rate falls to 0) "
                       f"must be in [0, 1], got {cfg['lr_decay']!r}")
    if cfg.get("d_width") is not None and cfg["kind"] != "images":
        raise RunError("--d-width is for images; the 2-D mixtures' MLPs share one --width")
    mbstd = cfg.get("mbstd_group", 0)
    if isinstance(mbstd, bool) or not isinstance(mbstd, int) or mbstd < 0:
        raise RunError(f"--mbstd-group must be a non-negative integer (0 for none), got {mbstd!r}")
    if mbstd and cfg["kind"] != "images":
        raise RunError("--mbstd-group is for images; the 2-D mixtures' MLP D takes one point at a time")
    if cfg.get("pack", 1) != 1 and cfg["kind"] != "images":
        raise RunError("--pack (PacGAN) is for images; the 2-D mixtures' MLP D takes one point at a time")
    if cfg["batch_size"] % cfg.get("pack", 1):
        raise RunError(f"--batch-size {cfg['batch_size']} must be a multiple of --pack {cfg['pack']} (D judges "
                       f"groups of {cfg['pack']} samples)")
    if cfg.get("data_dir") is not None and _data_key(cfg["data"]) not in MNIST_FAMILY:
        raise RunError(f"--data-dir is where {' and '.join(MNIST_FAMILY)} are read from; --data {cfg['data']} does "
                       f"not use it")
    scored = cfg["kind"] == "points" or _data_key(cfg["data"]) in MNIST_FAMILY
    if scored and cfg["eval_every"] % cfg["log_every"]:  # metrics go on logged steps only
        raise RunError(f"--eval-every ({cfg['eval_every']}) must be a multiple of --log-every ({cfg['log_every']})")
    if cfg["kind"] == "points" and cfg.get("arch") not in (None, "mlp"):
        raise RunError(f"--arch {cfg['arch']} is for images; the 2-D mixtures use an MLP")
    if cfg["kind"] == "images":
        if cfg.get("arch") not in ARCHS:
            raise RunError(f"unknown --arch {cfg.get('arch')!r}; choose one of {', '.join(ARCHS)}")
        if cfg.get("channels") not in (1, 3):
            raise RunError(f"--channels must be 1 or 3, got {cfg.get('channels')!r}")
        s = cfg.get("image_size")
        if s is not None and (s < 8 or s & (s - 1)):
            raise RunError(f"--image-size must be a power of two >= 8 (8, 16, 32, 64, ...), got {s}")


def _check_augment(cfg: dict) -> None:
    """--augment POLICY [--augment-p P|ada]: a valid policy, for images; p a probability or "ada"
    (a number given on the command line arrives as text and is stored as a number)."""
    policy, p = cfg.get("augment"), cfg.get("augment_p")
    if isinstance(policy, str) and policy.strip().lower() == "none":  # turns off a data default's policy
        cfg["augment"] = policy = None
    if policy is None:
        if p is not None:
            raise RunError("--augment-p needs --augment POLICY (the transforms to apply)")
        return
    if cfg["kind"] != "images":
        raise RunError("--augment is for image data; the 2-D mixtures are not images")
    try:
        parse_policy(policy)
        if isinstance(p, str) and p != "ada":
            try:
                p = float(p)
            except ValueError:
                raise ValueError(f"augment_p must be a probability in [0, 1] or 'ada', got {p!r}") from None
        if p is not None:
            cfg["augment_p"] = p = augment_checked_p(p) if p != "ada" else p
    except ValueError as e:
        raise RunError(f"--augment / --augment-p: {e}") from None


def _check_device(device: str) -> None:
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise RunError(f"--device {device!r} is not a device: give cpu, cuda or cuda:N") from None
    if d.type == "cpu":
        return
    if d.type != "cuda":
        raise RunError(f"--device {device!r}: ganfast trains on cpu or cuda (cuda:N)")
    if torch.version.cuda is None:
        raise RunError(f"--device {device}: this torch ({torch.__version__}) is a CPU-only build; use --device cpu, "
                       f"or install a CUDA build of torch and reinstall ganfast with `pip install "
                       f"--no-build-isolation .`")
    if not torch.cuda.is_available():
        raise RunError(f"--device {device}: torch sees no CUDA device here; use --device cpu")
    if d.index is not None and d.index >= torch.cuda.device_count():
        raise RunError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices (cuda:0 to "
                       f"cuda:{torch.cuda.device_count() - 1})")


# ----------------------------------------------------------------------------------------------
# Building a run from its configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    dir: Path
    config: dict
    trainer: Trainer
    dataset: Dataset | None  # None where it was not needed (eval/sample of a mixture use the mixture)

    @property
    def mixture(self):
        return MIXTURES.get(self.config.get("data_name")) if self.config["kind"] == "points" else None

    @property
    def generator(self) -> torch.nn.Module:
        """The EMA copy of G where there is one, else G."""
        return self.trainer.ema_g if self.trainer.ema_g is not None else self.trainer.G


def _load_data(cfg: dict) -> Dataset:
    from .mnist import MNISTNotFound

    g = torch.Generator().manual_seed(cfg["seed"])
    try:
        labels = bool(cfg.get("conditional"))
        if cfg["kind"] == "points":
            return make_dataset(cfg["data"], n_points=cfg["n_points"], generator=g, labels=labels)
        return make_dataset(cfg["data"], image_size=cfg.get("image_size"), channels=cfg["channels"], generator=g,
                            labels=labels, data_dir=cfg.get("data_dir"))
    except (ValueError, MNISTNotFound) as e:  # an empty folder, no readable image, no MNIST
        raise RunError(str(e)) from None


def _setup(cfg: dict) -> None:
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])  # small MLPs are fastest on one thread
    backends.set_backend(cfg["backend"])


def _build(cfg: dict, run_dir: Path, dataset: Dataset | None) -> Run:
    torch.manual_seed(cfg["seed"])  # the models' initialization
    shape = tuple(cfg["data_shape"])
    num_classes = cfg["num_classes"] if cfg.get("conditional") else None  # written by _train from the data
    G, D, latent_dim = build_models(cfg["kind"], shape, latent_dim=cfg.get("latent_dim"),
                                    arch=cfg.get("arch") if cfg["kind"] == "images" else None, width=cfg.get("width"),
                                    num_classes=num_classes, pack=cfg.get("pack", 1), d_width=cfg.get("d_width"),
                                    mbstd_group=cfg.get("mbstd_group", 0))
    betas = (cfg["beta1"], cfg["beta2"])
    g_opt = torch.optim.Adam(G.parameters(), lr=cfg["lr"], betas=betas)
    d_opt = torch.optim.Adam(D.parameters(), lr=cfg["lr"], betas=betas)
    augment_p = cfg.get("augment_p")
    trainer = Trainer(G, D, g_opt, d_opt, config=step_config(cfg), latent_dim=latent_dim, device=cfg["device"],
                      seed=cfg["seed"], num_classes=num_classes,
                      class_probs=cfg.get("class_probs") if num_classes is not None else None,
                      augment=cfg.get("augment"), augment_p=1.0 if augment_p is None else augment_p)
    return Run(Path(run_dir), cfg, trainer, dataset)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def load_run(run_dir, need_checkpoint: bool = True, with_data: bool = False, backend: str | None = None,
             device: str | None = None) -> Run:
    """Rebuild a run from RUN/config.json and load its newest valid checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder {str(run_dir)!r} does not exist")
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise RunError(f"{str(run_dir)!r} is not a ganfast run folder: it has no config.json "
                       f"(`ganfast train --out {run_dir}` makes one)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{cfg_path} is not valid JSON: {e}") from e
    cfg.setdefault("conditional", False)  # runs written before conditional training
    missing = [k for k in RUN_KEYS + ("kind", "data_shape") if k not in cfg]
    if missing:
        raise RunError(f"{cfg_path} lacks {', '.join(missing)}: it was not written by this version of ganfast")
    for k, v in LATER_KEYS.items():
        cfg.setdefault(k, v)
    if backend is not None:
        cfg["backend"] = backend
    if device is not None:
        cfg["device"] = device
    elif cfg.get("device", "cpu").startswith("cuda") and not torch.cuda.is_available():
        cfg["device"] = "cpu"
    _check(cfg)
    if need_checkpoint and not ckpt.list_checkpoints(run_dir / "checkpoints"):
        raise RunError(f"run folder {str(run_dir)!r} has no checkpoint yet (checkpoints/ckpt-*.pt)")
    _setup(cfg)
    run = _build(cfg, run_dir, _load_data(cfg) if with_data else None)
    if need_checkpoint:
        run.trainer.load_checkpoint(run_dir / "checkpoints")
    return run


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------
def _eval_noise(run: Run, n: int) -> torch.Tensor:
    # fixed noise: the metrics logged during training, the summary and `ganfast eval` use the same z
    g = torch.Generator().manual_seed(run.config["seed"] + 7919)
    return torch.randn((n,) + tuple(run.trainer.latent_shape), generator=g).to(run.trainer.device,
                                                                              run.trainer.dtype)


def _generate(run: Run, z: torch.Tensor, labels: torch.Tensor | None = None, chunk: int = 8192) -> torch.Tensor:
    if not len(z):
        return torch.empty(0)
    ys = labels.split(chunk) if labels is not None else [None] * len(z.split(chunk))
    return torch.cat([run.trainer.sample(len(c), z=c, labels=y).float().cpu() for c, y in zip(z.split(chunk), ys)])


def _eval_labels(run: Run, n: int) -> torch.Tensor | None:
    """A conditional run's evaluation labels: every class in turn (fixed, like the noise)."""
    return torch.arange(n) % run.trainer.num_classes if run.trainer.num_classes is not None else None


_SCORERS: dict = {}  # (kind, data_dir) -> image_metrics.MNISTScorer: the classifier and the test features


def mnist_scorer(cfg: dict):
    from .classifier import ClassifierError
    from .image_metrics import MNISTScorer
    from .mnist import MNISTNotFound

    key = (_data_key(cfg["data"]), cfg.get("data_dir"))
    if key not in _SCORERS:
        try:
            _SCORERS[key] = MNISTScorer(key[0], data_dir=key[1])
        except (ClassifierError, MNISTNotFound) as e:
            raise RunError(str(e)) from None
    return _SCORERS[key]


def mnist_metrics(run: Run, n: int | None = None, with_kid: bool = True) -> dict:
    """MNIST family: modes of 10 / 1000 and KL(p || uniform) of n samples (default the protocol's
    26,000) labelled by the reference classifier, and the classifier-feature FD (and KID) against
    the test set. A conditional run samples every class in turn (as `metrics_of` does for points)
    and adds label_hit_rate: the fraction of G(z, y) the classifier reads as digit y."""
    from .image_metrics import N_MODE_SAMPLES

    scorer = mnist_scorer(run.config)
    z = _eval_noise(run, n or N_MODE_SAMPLES)
    y = _eval_labels(run, len(z))
    x = _generate(run, z, y)
    out = {"step": run.trainer.step_count, **scorer.score(x, with_kid=with_kid, labels=y)}
    if "test_accuracy" in scorer.classifier_info:
        out["classifier_test_accuracy"] = scorer.classifier_info["test_accuracy"]
    return out


def metrics_of(run: Run) -> dict:
    """Points: the mode metrics of N_EVAL_SAMPLES samples of the (EMA) generator. MNIST family:
    mnist_metrics. Images: D's mean logit on real and generated images and the pixel statistics of
    each."""
    if _data_key(run.config["data"]) in MNIST_FAMILY:
        return mnist_metrics(run)
    out = {"step": run.trainer.step_count}
    z = _eval_noise(run, N_EVAL_SAMPLES if run.config["kind"] == "points" else 256)
    y = _eval_labels(run, len(z))
    x = _generate(run, z, y)
    if run.config["kind"] == "points":
        m = mode_metrics(x, run.mixture)
        out.update(m.as_dict())
        if y is not None:  # the fraction of G(z, y) samples whose nearest mode is y
            nearest = torch.cdist(x.double(), run.mixture.means.double()).argmin(1)
            out["label_hit_rate"] = float((nearest == y).double().mean())
        return out
    data = run.dataset if run.dataset is not None else _load_data(run.config)
    real = data.samples[:256]
    D = run.trainer.D
    with torch.no_grad():
        was = D.training
        D.eval()
        try:
            dev, dt = run.trainer.device, run.trainer.dtype
            if y is None:  # a PacGAN D judges groups of `pack` samples (never conditional: the trainer refuses it)
                pack = run.trainer.config.pack

                def packed(v):
                    return pack_samples(v[:len(v) // pack * pack].to(dev, dt), pack)
                d_real, d_fake = D(packed(real)), D(packed(x))
            else:  # a conditional D scores each image with its class
                d_real, d_fake = D(real.to(dev, dt), data.labels[:len(real)].to(dev)), D(x.to(dev, dt), y.to(dev))
            out["d_real_mean"] = float(d_real.float().mean())
            out["d_fake_mean"] = float(d_fake.float().mean())
        finally:
            D.train(was)
    out.update(real_pixel_mean=float(real.mean()), real_pixel_std=float(real.std()),
               fake_pixel_mean=float(x.mean()), fake_pixel_std=float(x.std()), n_samples=len(x))
    return out


def format_metrics(m: dict) -> str:
    if "classifier_fd" in m or "kl" in m:
        what = "classes" if m["n_modes"] == 10 else "modes"
        text = f"{what} {m['modes']}/{m['n_modes']}, KL {m['kl']:.4f} ({m['n_samples']} samples)"
        if "channel_kl" in m:
            text += " [per-channel digit KL " + " / ".join(f"{k:.4f}" for k in m["channel_kl"]) + "]"
        if "classifier_fd" in m:
            text += f"; classifier FD {m['classifier_fd']:.3f}"
        if "classifier_kid" in m:
            text += f", classifier KID {m['classifier_kid']:.5f} ± {m['classifier_kid_std']:.5f}"
        if "classifier_fd" in m:
            text += " (on the MNIST classifier's features vs the test set; not Inception)"
        if "label_hit_rate" in m:
            text += f"; label hit rate {100 * m['label_hit_rate']:.1f}%"
        return text
    if "modes_captured" in m:
        hit = f", label hit rate {100 * m['label_hit_rate']:.1f}%" if "label_hit_rate" in m else ""
        return (f"modes {m['modes_captured']}/{m['n_modes']}, high quality {100 * m['hq_fraction']:.1f}%, "
                f"reverse KL {m['reverse_kl']:.4f}{hit} ({m['n_samples']} samples)")
    return (f"D(real) {m['d_real_mean']:.3f}, D(fake) {m['d_fake_mean']:.3f}; pixels real "
            f"{m['real_pixel_mean']:.3f}±{m['real_pixel_std']:.3f}, fake {m['fake_pixel_mean']:.3f}±"
            f"{m['fake_pixel_std']:.3f}")


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------
def default_out(data: str) -> Path:
    name = os.path.basename(os.path.normpath(str(data))) or "data"
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def lr_factor(step: int, steps: int, decay: float) -> float:
    """Learning-rate multiplier for the update after `step` finished steps: 1, then a linear fall to 0
    over the last `decay` fraction of `steps` (the late, small steps sharpen the modes)."""
    if decay <= 0:
        return 1.0
    start = steps * (1.0 - decay)
    if step < start:
        return 1.0
    return max(0.0, (steps - step) / max(steps - start, 1e-9))


def _say(text: str, progress: bool) -> None:
    if progress:
        from tqdm.auto import tqdm
        tqdm.write(text)
    else:
        print(text, flush=True)


def warn(text: str) -> None:
    """A warning for the person at the terminal: one line on stderr (no source line, no traceback)."""
    print(f"ganfast: warning: {text}", file=sys.stderr, flush=True)


def _missing_packages(cfg: dict) -> list[tuple[str, str]]:
    """(package, what needs it) for each optional package this run needs and cannot import."""
    need = [("matplotlib", "matplotlib", "sample pictures and curves.png")]
    if cfg["kind"] == "images":
        need.append(("PIL", "pillow", "image grids" + ("" if _data_key(cfg["data"]) == "digits" else
                                                       " and reading the image folder")))
    if _data_key(cfg["data"]) == "digits":
        need.append(("sklearn", "scikit-learn", "the digits data set"))
    missing = []
    for module, package, why in need:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append((package, why))
    return missing


def check_optional_dependencies(cfg: dict) -> None:
    """Before any work is done: RunError naming the optional packages this run needs and lacks."""
    missing = _missing_packages(cfg)
    if missing:
        raise RunError(f"this run needs {', '.join(f'{p} ({why})' for p, why in missing)}, not installed here: "
                       f"pip install {' '.join(p for p, _ in missing)}")


def check_new_out(run_dir: Path) -> None:
    """A new run goes into a new or empty folder (an existing run is continued with --resume), and
    one that can be written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {str(run_dir)!r} exists and is not a folder")
    if (run_dir / "config.json").exists():
        raise RunError(f"{str(run_dir)!r} already holds a run; continue it with --resume {run_dir} or "
                       f"choose another --out")
    if run_dir.is_dir():
        entries = sorted(p.name for p in run_dir.iterdir())
        if entries:
            more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
            raise RunError(f"--out {str(run_dir)!r} already holds other files ({entries[0]!r}{more}) and is not a "
                           f"ganfast run: give a new or empty folder, such as --out {run_dir / 'run'}")
    existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise RunError(f"cannot write the run folder {run_dir}: {existing} is not writable (read-only or not "
                       f"yours); choose another --out")


def _os_error(e: OSError, run_dir: Path) -> OSError | RunError:
    """The one-line RunError of a failed write to the run folder (a full disk says which checkpoint
    is left and how to go on); other OSErrors unchanged."""
    where = f" ({e.filename})" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        done = ckpt.list_checkpoints(run_dir / "checkpoints")
        left = (f"its newest checkpoint is step {ckpt.checkpoint_step(done[-1])} ({done[-1]})" if done else
                "it has no checkpoint yet")
        return RunError(f"the disk is full{where}: run {run_dir} stopped and {left}; free some space, then "
                        f"continue it with `ganfast train --resume {run_dir}`")
    in_run = e.filename is None or Path(os.path.abspath(e.filename)).is_relative_to(run_dir.absolute())
    if in_run and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return RunError(f"cannot write the run folder {run_dir}: {e.strerror}{where}")
    return e


def _warn_if_no_kernels(cfg: dict) -> None:
    device = torch.device(cfg["device"])
    if cfg["backend"] == "auto" and backends.resolve(device) == "reference":
        native = "cuda" if device.type == "cuda" else "cpu"
        warn(f"no ganfast kernels for {device.type} tensors here, so this run uses the slower plain-PyTorch "
             f"reference: {backends.status(native).reason}")


def prepare(options: dict | None = None, out=None, resume=None, steps: int | None = None,
            backend: str | None = None, device: str | None = None, check_out: bool = True) -> tuple[dict, Path]:
    """The configuration and folder of a run to train, after every check that can be made before the
    first step: options, device, backend, the --out folder (check_out), optional packages."""
    if resume is not None:
        run_dir = Path(resume)
        cfg = load_run(run_dir, need_checkpoint=False, backend=backend, device=device).config  # checks the folder
        if steps is not None:
            if steps < 1:
                raise RunError(f"--steps must be a positive integer, got {steps}")
            cfg["steps"] = steps
    else:
        cfg = resolve_options(**(options or {}))
        run_dir = Path(out) if out is not None else default_out(cfg["data"])
        if check_out:
            check_new_out(run_dir)
    check_optional_dependencies(cfg)
    return cfg, run_dir


def train(options: dict | None = None, out=None, resume=None, steps: int | None = None, backend: str | None = None,
          device: str | None = None, progress: bool = True, echo=print) -> dict:
    """Train a new run (options: see resolve_options; out: its folder) or continue one (resume: its
    folder; steps: a new total; a run stopped before its first checkpoint starts again from step 0).
    Returns the summary (also RUN/summary.json). Under torch.distributed (`ganfast train --nproc N`)
    every rank trains; rank 0 alone prints and writes the run's files."""
    main = distributed.is_main()
    if not main:
        echo, progress = (lambda *a, **k: None), False
    # the other ranks may already see rank 0's files in --out
    cfg, run_dir = prepare(options, out, resume, steps, backend, device, check_out=main)
    try:
        return _train(cfg, run_dir, resume is not None, progress, echo, main)
    except OSError as e:
        err = _os_error(e, run_dir)
        if err is e:
            raise
        raise err from e


def _train(cfg: dict, run_dir: Path, resuming: bool, progress: bool, echo, main: bool) -> dict:
    _setup(cfg)
    if main:
        _warn_if_no_kernels(cfg)
    dataset = _load_data(cfg)
    cfg["data_name"] = dataset.name
    cfg["data_shape"] = list(dataset.shape)
    if cfg.get("conditional"):
        if resuming and "num_classes" in cfg and cfg["num_classes"] != dataset.num_classes:
            raise RunError(f"run {str(run_dir)!r} was trained on {cfg['num_classes']} classes, the data now has "
                           f"{dataset.num_classes}")
        if resuming and dataset.class_names is not None and cfg.get("class_names", dataset.class_names) != \
                dataset.class_names:  # same count, other classes: each label would mean another class
            raise RunError(f"run {str(run_dir)!r} was trained on the classes {', '.join(cfg['class_names'])}; the "
                           f"data's class folders are now {', '.join(dataset.class_names)}")
        cfg["num_classes"] = dataset.num_classes
        if dataset.class_names is not None:
            cfg["class_names"] = dataset.class_names  # what each label means: sample --class NAME reads it
        cfg["class_probs"] = dataset.class_frequencies()  # fake labels follow the data's class frequencies
    if cfg["kind"] == "points":
        cfg["latent_dim"] = cfg.get("latent_dim") or 2
    if not resuming and len(dataset) < cfg["batch_size"]:
        raise RunError(f"--batch-size {cfg['batch_size']} is larger than the data set ({len(dataset)} samples)")
    run = _build(cfg, run_dir, dataset)
    tr = run.trainer
    # the schedule's base learning rates: the fresh optimizers' (a checkpoint holds decayed ones)
    base = [[g["lr"] for g in opt.param_groups] for opt in (tr.g_optimizer, tr.d_optimizer)]
    if resuming and ckpt.list_checkpoints(run_dir / "checkpoints"):
        with warnings.catch_warnings(record=True) as caught:  # a broken newest checkpoint: said once, below
            warnings.simplefilter("always")
            tr.load_checkpoint(run_dir / "checkpoints")
        for message in dict.fromkeys(str(w.message) for w in caught):
            if main:
                warn(message)
        if tr.step_count >= cfg["steps"]:
            raise RunError(f"run {str(run_dir)!r} is already at step {tr.step_count} of {cfg['steps']}: pass a "
                           f"larger --steps to train it further")
        echo(f"resuming {run_dir} from step {tr.step_count} to step {cfg['steps']}")
    elif resuming:
        echo(f"{run_dir} stopped before its first checkpoint: training it from step 0 to step {cfg['steps']} "
             f"with its config.json")
    cfg["latent_dim"] = int(tr.latent_shape[0])
    cfg["config_version"] = CONFIG_VERSION
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / "config.json", cfg)
    start_step = tr.step_count
    if cfg["kind"] == "points" and start_step == 0:
        m0 = metrics_of(run)
        echo(f"step 0: {format_metrics(m0)}")
    else:
        m0 = None

    def set_lr(step: int) -> float:
        f = lr_factor(step, cfg["steps"], cfg["lr_decay"]) * tr.monitor.lr_scale
        for opt, lrs in zip((tr.g_optimizer, tr.d_optimizer), base):
            for group, lr in zip(opt.param_groups, lrs):
                group["lr"] = lr * f
        return f

    nan = float("nan")
    points = cfg["kind"] == "points"
    family = _data_key(cfg["data"]) in MNIST_FAMILY
    if family and main:
        mnist_scorer(cfg)  # the reference classifier (trained on first use), before the clock starts
    eval_s = [0.0]  # time spent in the MNIST-family evaluations, kept out of the training time

    def callback(trainer, step, stats):
        f = set_lr(step)  # for the next update
        if stats is None:
            return None
        extra = {"lr": cfg["lr"] * f}
        if points:
            extra.update(modes_captured=nan, hq_fraction=nan, reverse_kl=nan)
            if cfg.get("conditional"):
                extra["label_hit_rate"] = nan
            if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
                m = metrics_of(run)
                extra.update(modes_captured=float(m["modes_captured"]), hq_fraction=m["hq_fraction"],
                             reverse_kl=m["reverse_kl"])
                if "label_hit_rate" in m:
                    extra["label_hit_rate"] = m["label_hit_rate"]
                if main:
                    _say(f"step {step}: {format_metrics(m)}", progress)
        if family:
            extra.update(modes_captured=nan, mode_kl=nan, classifier_fd=nan, train_s=nan)
            if cfg.get("conditional"):
                extra["label_hit_rate"] = nan
            if main and (step % cfg["eval_every"] == 0 or step == cfg["steps"]):
                t = time.perf_counter()
                m = mnist_metrics(run, cfg["eval_samples"], with_kid=False)
                train_s = t - t0 - eval_s[0]
                extra.update(modes_captured=float(m["modes"]), mode_kl=m["kl"], classifier_fd=m["classifier_fd"],
                             train_s=train_s)
                if "label_hit_rate" in m:
                    extra["label_hit_rate"] = m["label_hit_rate"]
                eval_s[0] += time.perf_counter() - t
                _say(f"step {step} ({train_s:.0f} s of training): {format_metrics(m)}", progress)
        return extra

    set_lr(start_step)
    data = dataset.training_data(cfg["batch_size"], tr.device, cfg["seed"], tr.world_size)  # a folder streams
    log_every = cfg["log_every"]
    t0 = time.perf_counter()
    # resume=False: the checkpoint, if any, was loaded above (fit would load a broken newest one again)
    tr.fit(data, steps=cfg["steps"], batch_size=cfg["batch_size"], log_every=log_every, log_dir=run_dir,
           checkpoint_every=cfg["checkpoint_every"], sample_every=cfg["sample_every"], resume=False,
           n_samples=1000 if points else 64, progress=progress, callback=callback)
    wall = time.perf_counter() - t0
    done_steps = tr.step_count - start_step
    final = metrics_of(run)
    train_s = wall - eval_s[0]
    summary = {"run": str(run_dir), "data": cfg["data"], "steps": tr.step_count, "steps_this_session": done_steps,
               "wall_s": wall, "train_s": train_s, "eval_s": eval_s[0],
               "steps_per_s": done_steps / train_s if train_s > 0 else nan, "metrics": final,
               "initial_metrics": m0, "seed": cfg["seed"], "load_average": list(os.getloadavg())}
    if main:
        _write_json(run_dir / "summary.json", summary)
    echo(format_summary(summary))
    return summary


def format_summary(s: dict) -> str:
    evals = f" (of which {s['eval_s']:.1f} s evaluating)" if s.get("eval_s") else ""
    lines = [f"run {s['run']}: {s['steps']} steps ({s['steps_this_session']} this session) in {s['wall_s']:.1f} s"
             f"{evals}, {s['steps_per_s']:.1f} steps/s",
             f"final (EMA) generator: {format_metrics(s['metrics'])}"]
    m = s["metrics"]
    if "modes_captured" in m:
        lines.append(f"  modes captured     {m['modes_captured']}/{m['n_modes']}")
        lines.append(f"  high-quality       {100 * m['hq_fraction']:.1f}%  (within 3 std of a mode)")
        lines.append(f"  reverse KL         {m['reverse_kl']:.4f} nats")
    if "label_hit_rate" in m:
        how = "read as digit y by the classifier" if "kl" in m else "nearest to mode y"
        lines.append(f"  label hit rate     {100 * m['label_hit_rate']:.1f}%  (G(z, y) {how})")
    lines.append(f"  steps/s            {s['steps_per_s']:.1f}")
    lines.append("  wrote              config.json, checkpoints/, metrics.csv, samples/, curves.png, summary.json")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# eval, sample, explore
# ----------------------------------------------------------------------------------------------
def evaluate(run_dir, backend: str | None = None, device: str | None = None, fid: bool = False) -> dict:
    """The metrics of the run's newest checkpoint (the same fixed noise as during training). fid: also
    Inception FID and KID (torchmetrics) of 10,000 samples against the real images (MNIST family:
    the test set)."""
    run = load_run(run_dir, backend=backend, device=device)
    out = {"run": str(run_dir), **metrics_of(run)}
    if fid:
        out.update(_inception_metrics(run))
    return out


def _inception_metrics(run: Run, n: int = 10_000) -> dict:
    from .image_metrics import inception_fid_kid

    if run.config["kind"] != "images":
        raise RunError("--fid scores images; this run's samples are 2-D points")
    if _data_key(run.config["data"]) in MNIST_FAMILY:
        from .mnist import to_28
        real = mnist_reference_images(run.config)
        fake = to_28(_generate(run, _eval_noise(run, n)))
    else:
        real = _load_data(run.config).samples
        fake = _generate(run, _eval_noise(run, min(n, max(len(real), 2))))
    try:
        return inception_fid_kid(fake, real)
    except ImportError as e:
        raise RunError(str(e)) from None


def mnist_reference_images(cfg: dict) -> torch.Tensor:
    """The MNIST family's real images for Inception FID: the test set (stacked as the scorer stacks it)."""
    scorer = mnist_scorer(cfg)
    return scorer.test_images


def sample(run_dir, n: int, out_path, seed: int = 0, backend: str | None = None, device: str | None = None,
           labels=None):
    """n samples of the run's (EMA) generator, written by the form of out_path: FILE.npy a NumPy array,
    FILE.png one picture (an image grid, or a scatter of 2-D points), DIR/ (or an existing folder) one
    PNG per image. Returns the array. A conditional run samples the classes `labels` (a list; default
    every class) in equal blocks of ceil(n / len(labels)): one row per class in a picture, and
    FILE.npy is joined by FILE.labels.npy."""
    import numpy as np

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RunError(f"-n must be a positive integer, got {n!r}")
    to_dir = str(out_path).endswith(("/", os.sep)) or Path(out_path).is_dir()
    out_path = Path(out_path)
    if not to_dir and out_path.suffix.lower() not in (".npy", ".png"):
        raise RunError(f"-o must name a .npy file, a .png file or a folder (ending in /), got {str(out_path)!r}")
    run = load_run(run_dir, backend=backend, device=device)
    if to_dir and run.config["kind"] != "images":
        raise RunError("-o DIR/ writes one PNG per image; this run's samples are 2-D points: use FILE.png or FILE.npy")
    y, nrow = _sample_labels(run, n, labels)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n,) + tuple(run.trainer.latent_shape), generator=g).to(run.trainer.device, run.trainer.dtype)
    x = _generate(run, z, y)
    if _data_key(run.config["data"]) in MNIST_FAMILY:
        from .mnist import to_28
        x = to_28(x).contiguous()  # the 28x28 digits, without the padding the models work at
    if to_dir:
        from .viz import save_image_grid
        for i, img in enumerate(x):
            save_image_grid(out_path / f"sample-{i:06d}.png", img[None], nrow=1, padding=0, scale=1)
    elif out_path.suffix.lower() == ".png":
        from .viz import save_samples
        save_samples(out_path, x, mixture=run.mixture, nrow=nrow)
    else:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(out_path, x.numpy())
        if y is not None:
            np.save(out_path.with_suffix(".labels.npy"), y.numpy())
    return x.numpy()


def class_index(run: Run, label) -> int:
    """The index of class `label` of a conditional run: a class's name (a folder run's class subfolder,
    config.json's class_names) or its index, as an int or a string of digits. A name wins over an
    index: in a folder of classes "1", "10", "2", class "2" is index 2 by name, not the folder "10"."""
    k, names = run.trainer.num_classes, run.config.get("class_names")
    if names is not None and str(label) in names:
        return names.index(str(label))
    index = int(label) if isinstance(label, str) and label.strip().lstrip("-").isdigit() else label
    if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < k:
        return index
    listed = f"a name of {', '.join(names)} or an index in [0, {k})" if names is not None else \
        f"an index in [0, {k})"
    raise RunError(f"--labels / --class: this run of {k} classes has no class {label!r}; give {listed}")


def _sample_labels(run: Run, n: int, labels) -> tuple[torch.Tensor | None, int]:
    """The labels of n samples (blocks of ceil(n / classes), one per class asked: names or indices,
    see class_index) and the grid's row length; (None, 8) for an unconditional run, which refuses labels."""
    k = run.trainer.num_classes
    if k is None:
        if labels is not None:
            raise RunError(f"--labels / --class: run {run.dir} is not conditional (trained without --conditional)")
        return None, 8
    classes = list(range(k)) if labels is None else [class_index(run, c) for c in labels]
    if not classes:
        raise RunError("--labels / --class: no class given")
    per = math.ceil(n / len(classes))
    return torch.tensor(classes)[torch.arange(n) // per], per


class _OneClass(torch.nn.Module):
    """A conditional model seen as an unconditional one of class k: forward(x) = model(x, k)."""

    def __init__(self, model: torch.nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x):
        return self.model(x, torch.full((x.shape[0],), self.k, dtype=torch.long, device=x.device))


class _SelfPacked(torch.nn.Module):
    """A PacGAN D (judging groups of `pack` samples) seen as one that judges single samples: each
    sample judged as a group of `pack` copies of itself (for D's saliency maps)."""

    def __init__(self, model, pack: int):
        super().__init__()
        self.model, self.pack = model, pack

    def forward(self, x):
        return self.model(pack_samples(x.repeat_interleave(self.pack, dim=0), self.pack))


def explore(run_dir, out_dir=None, seed: int = 0, backend: str | None = None, device: str | None = None,
            cls: int | str = 0) -> dict:
    """Latent interpolation grid, latent traversal and D's saliency maps (ganfast.viz.explore) as PNG in
    out_dir (default RUN/explore); of class `cls` (a name or an index: class_index) in a conditional
    run. Returns {name: path}."""
    from . import viz

    run = load_run(run_dir, with_data=True, backend=backend, device=device)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / "explore"
    D = run.trainer.D
    G = run.generator
    if run.trainer.num_classes is not None:
        cls = class_index(run, cls)
        G, D = _OneClass(G, cls), _OneClass(D, cls)
    elif run.trainer.config.pack > 1:
        D = _SelfPacked(D, run.trainer.config.pack)
    D.eval()
    G.eval()
    return viz.explore(G, D, run.config["latent_dim"], run.config["kind"], out_dir, run.dataset.samples,
                       mixture=run.mixture, generator=torch.Generator().manual_seed(seed))
