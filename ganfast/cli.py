"""The `ganfast` command (also `python -m ganfast`)."""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args) -> int:
    import platform

    import torch

    import ganfast
    from ganfast import backends

    try:
        import triton
        triton_version = triton.__version__
    except Exception as e:  # noqa: BLE001 - any failure means "not usable"
        triton_version = f"not available ({type(e).__name__})"
    print(f"ganfast {ganfast.__version__}")
    print(f"python  {platform.python_version()}")
    print(f"torch   {torch.__version__} (CUDA {torch.version.cuda or 'none'}; "
          f"GPU {'available: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available'})")
    print(f"triton  {triton_version} (TRITON_INTERPRET={'1' if backends.triton_interpret() else '0'})")
    print(f"backend selection: {backends.get_backend()}")
    print("\nbackends: (and the dtypes each takes, per op family where they differ)")
    for name in backends.BACKENDS:
        st = backends.status(name)
        print(f"  {name:<10} {'available' if st.available else 'not available':<14} {st.reason}")
        print(f"  {'':<10} takes: {_dtypes_by_family(name)}")
    print("\nauto picks (the first backend in its order that takes the input; all sizes unless limited below):")
    for device_type in ("cpu", "cuda"):
        picks = {(family, dtype): backends.resolve(torch.device(device_type), family, dtype)
                 for family in backends.FAMILIES for dtype in backends.TAKES["reference"][family]}
        usual = picks[("losses", torch.float32)]
        others = [f"{family} {backends.dtype_name(dtype)} -> {name}" for (family, dtype), name in picks.items()
                  if name != usual]
        print(f"  {device_type} tensors -> {usual}" + (f"; except {', '.join(others)}" if others else ""))
    limits = [f"{family} on {name} ({device_type}): " + (f"{low}..{high} elements" if low <= high else "never")
              for (family, name, device_type), (low, high) in backends.SIZE_LIMITS.items()]
    print(f"  size limits: {'; '.join(limits) if limits else 'none'}")
    if backends.status("cpu").available:
        cpu = torch.ops.ganfast_cpu
        print(f"\ncpu kernels: the {cpu.capability()} copy (this CPU and build: {', '.join(cpu.capabilities())}; "
              f"GANFAST_CPU_CAPABILITY lowers it); spectral norm writes gradients of "
              f"{cpu.nontemporal_min_bytes() / 2**20:g} MiB or more, and W/sigma of "
              f"{2 * cpu.nontemporal_min_bytes() / 2**20:g} MiB or more, around the caches")
    return 0


def _dtypes_by_family(name: str) -> str:
    """'float32, float16' when every family takes the same dtypes, else 'losses, penalties: ...; ...'."""
    from ganfast import backends

    groups: dict[tuple, list[str]] = {}
    for family in backends.FAMILIES:
        groups.setdefault(backends.TAKES[name][family], []).append(family)
    spelled = {dtypes: ", ".join(map(backends.dtype_name, dtypes)) for dtypes in groups}
    if len(groups) == 1:
        return next(iter(spelled.values()))
    return "; ".join(f"{', '.join(families)}: {spelled[dtypes]}" for dtypes, families in groups.items())


def _cmd_validate(args) -> int:
    from ganfast import validate
    from ganfast.backends import BackendUnavailableError

    try:
        results = validate.run_validation(seed=args.seed, families=args.family or None,
                                          backend_names=args.backend or None)
    except (ValueError, BackendUnavailableError) as e:
        return _fail(e)
    if not results:
        print("no kernel backend available to validate (only the reference runs here); see `ganfast info`")
        return 0
    head = f"{'op':<26} {'backend':<8} {'dtype':<6} {'max rel err':>12} {'tolerance':>10}  result"
    print(head)
    print("-" * len(head))
    for r in results:
        verdict = "pass" if r.passed else f"FAIL ({r.detail})"
        print(f"{r.op:<26} {r.backend:<8} {r.dtype:<6} {r.max_rel_error:>12.3e} {r.tolerance:>10.1e}  {verdict}")
    failed = sum(not r.passed for r in results)
    print(f"\n{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _cmd_bench(args) -> int:
    from ganfast import bench

    unknown = [s for s in args.suite if s not in bench.SUITES]
    if unknown:
        return _fail(ValueError(f"unknown benchmark suite {unknown[0]!r}; choose from {', '.join(bench.SUITES)}"))
    try:
        bench.run(args.suite or None, quick=args.quick, device=args.device, progress=True)
    except _run_errors() as e:
        return _fail(e)
    return 0


def _run_errors():
    from ganfast.backends import BackendUnavailableError
    from ganfast.run import RunError
    from ganfast.train import CheckpointError, DivergenceError
    from ganfast.train.distributed import DistributedError

    return (RunError, CheckpointError, DivergenceError, DistributedError, BackendUnavailableError, OSError,
            ImportError)


def _fail(e: Exception) -> int:
    if isinstance(e, OSError) and e.strerror:  # "[Errno 30] Read-only file system: 'x'" -> the words and the file
        message = e.strerror + (f": {e.filename}" if e.filename else "")
    else:
        message = str(e)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 1:  # a rank's traceback (--nproc N): what failed, and the error it ended in
        message = f"{lines[0]} {lines[-1]}"
    print(f"ganfast: error: {message}", file=sys.stderr)
    return 2


def _cmd_train(args) -> int:
    from ganfast import run
    from ganfast.train import distributed

    options = {k: getattr(args, k) for k in run.RUN_KEYS + tuple(run.LATER_KEYS) if k not in ("data",)
               and hasattr(args, k)}
    options.update(data=args.data, augment=args.augment, augment_p=args.augment_p)
    progress = not args.no_progress
    try:
        if isinstance(args.nproc, bool) or args.nproc < 1:
            raise run.RunError(f"--nproc must be a positive integer (processes on this machine), got {args.nproc}")
        if args.resume is not None:
            given = sorted(f"--{k.replace('_', '-')}" for k, v in options.items() if v is not None and k != "steps")
            if given or args.out is not None:
                raise run.RunError(f"--resume continues a run with its own config.json; only --steps, --backend, "
                                   f"--device and --no-progress can be given with it (got "
                                   f"{', '.join(given + (['--out'] if args.out else []))})")
            run.prepare(resume=args.resume, steps=args.steps, backend=args.backend, device=args.device)
            train_args = (None, None, args.resume, args.steps, args.backend, args.device, progress)
        else:
            options.update(backend=args.backend, device=args.device)
            # checked here, before any process starts; every process gets the same folder
            _, out = run.prepare(options, args.out)
            train_args = (options, str(out), None, None, None, None, progress)
        distributed.launch(args.nproc, run.train, *train_args)  # nproc=1: run.train here
    except _run_errors() as e:
        return _fail(e)
    return 0


def _cmd_eval(args) -> int:
    import json

    from ganfast import run

    try:
        m = run.evaluate(args.run, backend=args.backend, device=args.device, fid=args.fid)
    except _run_errors() as e:
        return _fail(e)
    if args.json:
        print(json.dumps(m, sort_keys=True))
    else:
        print(f"{m['run']} at step {m['step']}: {run.format_metrics(m)}")
        if "inception_fid" in m:
            print(f"Inception FID {m['inception_fid']:.3f}, KID {m['inception_kid']:.5f} ± "
                  f"{m['inception_kid_std']:.5f} "
                  f"({m['inception_n_fake']} samples vs {m['inception_n_real']} real images; torchmetrics)")
    return 0


def _cmd_classifier(args) -> int:
    from ganfast import classifier
    from ganfast.mnist import MNISTNotFound

    try:
        if args.retrain or not classifier.classifier_path().is_file():
            _, info = classifier.build_reference_classifier(args.data_dir, epochs=args.epochs, seed=args.seed)
        else:
            _, info = classifier.load_classifier()
    except (classifier.ClassifierError, MNISTNotFound, ValueError) as e:
        return _fail(e)
    print(f"MNIST classifier {classifier.classifier_path()}: test accuracy {100 * info['test_accuracy']:.2f}%, "
          f"sha256 {info['sha256'][:16]}... (verified)")
    return 0


def _cmd_sample(args) -> int:
    from ganfast import run

    try:
        labels = _class_list(args.labels, args.cls)
        x = run.sample(args.run, args.n, args.o, seed=args.seed, backend=args.backend, device=args.device,
                       labels=labels)
    except _run_errors() as e:
        return _fail(e)
    print(f"wrote {args.o}: array of shape {tuple(x.shape)}, {x.dtype}")
    return 0


def _class_list(labels: str | None, cls: str | None) -> list[str] | None:
    """--labels A,B,... or --class K as a list of classes, names or indices (run.class_index reads
    them); None: every class."""
    if cls is not None:
        return [cls]
    if labels is None:
        return None
    return [v.strip() for v in labels.split(",") if v.strip()]


def _cmd_explore(args) -> int:
    from ganfast import run

    try:
        paths = run.explore(args.run, args.out, seed=args.seed, backend=args.backend, device=args.device,
                            cls=args.cls)
    except _run_errors() as e:
        return _fail(e)
    for name, path in paths.items():
        print(f"{name:<15} {path}")
    return 0


def _add_train(sub) -> None:
    from ganfast import losses
    from ganfast.run import PENALTY_CHOICES, RING_DEFAULTS as R

    p = sub.add_parser("train", help="train a GAN (default: the 8-Gaussian ring, under a minute on 2 CPU cores)",
                       description="Train a GAN into a run folder (config.json, checkpoints/, metrics.csv, "
                                   "samples/, curves.png, summary.json) that is new or empty. Options left out take "
                                   "the measured default for the data's kind; the ring defaults are shown.")
    p.add_argument("--data", help="ring (default), grid25, digits, mnist, stacked-mnist, or a folder of images")
    p.add_argument("--data-dir", help="folder holding the MNIST IDX files (default $GANFAST_DATA, else a "
                                      "torchvision download)")
    p.add_argument("--pack", type=int, help="PacGAN packing: D judges this many samples at once (default 1)")
    p.add_argument("--eval-samples", type=int,
                   help="MNIST family: samples scored every --eval-every steps (the final score uses 26000)")
    p.add_argument("--loss", choices=losses.KINDS, help=f"GAN loss (default {R['loss']})")
    p.add_argument("--penalty", choices=PENALTY_CHOICES, help=f"gradient penalty (default {R['penalty']})")
    p.add_argument("--penalty-weight", type=float, help=f"its weight, λ or γ (default {R['penalty_weight']})")
    p.add_argument("--penalty-interval", type=int, help="lazy regularization: penalty every k-th D step")
    p.add_argument("--d-steps", type=int, help="D steps per G step (default 1)")
    p.add_argument("--sn", action=argparse.BooleanOptionalAction, default=None,
                   help="spectral norm on D's layers (default off: it over-constrains the small MLP D)")
    p.add_argument("--steps", type=int, help=f"total training steps (default {R['steps']})")
    p.add_argument("--batch-size", type=int, help=f"(default {R['batch_size']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate of G and D (default {R['lr']})")
    p.add_argument("--beta1", type=float, help=f"Adam beta1 (default {R['beta1']})")
    p.add_argument("--beta2", type=float, help=f"Adam beta2 (default {R['beta2']})")
    p.add_argument("--lr-decay", type=float,
                   help=f"fraction of the steps at the end over which the lr falls linearly to 0 (default {R['lr_decay']})")
    p.add_argument("--ema", type=float, help=f"decay of the EMA of G, 0 for none (default {R['ema']})")
    p.add_argument("--ema-rampup", type=float, help="cap the EMA's half-life at this fraction of the steps done "
                                                    "(StyleGAN's ema_rampup; default 0.05 for images, none for points; 0 for none)")
    p.add_argument("--latent-dim", type=int, help=f"size of z (default {R['latent_dim']} for points)")
    p.add_argument("--width", type=int, help="hidden units (MLP, default 128) or base channels (images, 64)")
    p.add_argument("--d-width", type=int, help="D's base channels when they differ from G's (images; --width / 4 is "
                   "the small-D setting of PacGAN's Table 3)")
    p.add_argument("--mbstd-group", type=int, help="a minibatch standard deviation channel in D (ProGAN) over groups "
                   "of this many of D's inputs (images; default 0: none)")
    p.add_argument("--arch", choices=("dcgan", "resnet"), help="image models (default dcgan)")
    p.add_argument("--conditional", action="store_true", default=None,
                   help="class-conditional G(z, y) and D(x, y) (projection D, conditional batch norm) on labelled "
                        "data: a mixture's modes, the digits, or a folder with one subfolder per class")
    p.add_argument("--image-size", type=int, help="resize images to this (power of two >= 8)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="image channels for a folder (default 3)")
    p.add_argument("--n-points", type=int, help=f"size of a mixture's training set (default {R['n_points']})")
    p.add_argument("--threads", type=int, help="torch CPU threads (default 1 for the 2-D MLPs; for images the cores idle when the run starts, recorded in config.json: pass it for runs that must match bitwise)")
    p.add_argument("--log-every", type=int, help=f"CSV row every N steps (default {R['log_every']})")
    p.add_argument("--eval-every", type=int, help=f"mode metrics every N steps (default {R['eval_every']})")
    p.add_argument("--sample-every", type=int, help=f"sample picture every N steps (default {R['sample_every']})")
    p.add_argument("--checkpoint-every", type=int, help=f"(default {R['checkpoint_every']})")
    p.add_argument("--augment", metavar="POLICY",
                   help="DiffAugment what D sees (images): transforms from color,translation,cutout, or none "
                        "(default none; stacked-mnist: color)")
    p.add_argument("--augment-p", metavar="P|ada",
                   help="probability a sample is augmented (default 1), or ada: adapted to keep E[sign D(real)] at 0.6")
    p.add_argument("--backend", help="ganfast backend: auto (default), reference, cpu, cuda, triton")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, help="seed of data, initialization and noise (default 0)")
    p.add_argument("--out", help="run folder (default runs/<data>-<date>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder (to --steps in total)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (torch.distributed; --batch-size is per process)")
    p.set_defaults(func=_cmd_train)


def _add_run_commands(sub) -> None:
    def common(p):
        p.add_argument("run", metavar="RUN", help="a run folder written by `ganfast train`")
        p.add_argument("--backend", help="ganfast backend (default auto)")
        p.add_argument("--device", help="cpu or cuda (default: the run's, else cpu)")

    p = sub.add_parser("eval", help="metrics of a run's last checkpoint")
    common(p)
    p.add_argument("--json", action="store_true", help="one machine-readable JSON line")
    p.add_argument("--fid", action="store_true", help="also Inception FID and KID (needs torchmetrics: "
                                                      "pip install 'torchmetrics[image]')")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("classifier", help="train (once) and verify the reference MNIST classifier of the MNIST "
                                          "metrics, cached under ~/.cache/ganfast (or $GANFAST_CACHE)")
    p.add_argument("--data-dir", help="folder holding the MNIST IDX files (default $GANFAST_DATA)")
    p.add_argument("--retrain", action="store_true", help="train it again even when cached")
    p.add_argument("--epochs", type=int, default=4, help="(default 4)")
    p.add_argument("--seed", type=int, default=0, help="(default 0)")
    p.set_defaults(func=_cmd_classifier)

    p = sub.add_parser("sample", help="write N samples of a run's generator (EMA copy): an array, a picture or "
                                      "one PNG per image")
    common(p)
    p.add_argument("-n", type=int, default=2500, help="number of samples (default 2500)")
    p.add_argument("-o", required=True, metavar="OUT", help="FILE.npy (a NumPy array), FILE.png (an image grid, "
                                                          "or a scatter of points) or DIR/ (one PNG per image)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--labels", metavar="K,K,...", help="conditional runs: the classes to sample, one row each "
                                                          "in a picture, by index or by name (a folder run's "
                                                          "class subfolders; default: every class)")
    which.add_argument("--class", dest="cls", metavar="K", help="conditional runs: only class K (index or name)")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("explore", help="latent interpolation, traversal and D's saliency maps as PNG")
    common(p)
    p.add_argument("--out", help="folder for the pictures (default RUN/explore)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent points (default 0)")
    p.add_argument("--class", dest="cls", default="0", metavar="K",
                   help="conditional runs: the class to explore, index or name (default 0)")
    p.set_defaults(func=_cmd_explore)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganfast", description="Fast, stable GAN training.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, backends and what auto picks")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("validate", help="check every backend's ops against the reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", action="append", help="only this op family (repeatable)")
    p.add_argument("--backend", action="append", help="only this backend (repeatable)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("bench", help="time ganfast against PyTorch eager and torch.compile")
    p.add_argument("suite", nargs="*", help="suites to run (default: all)")
    p.add_argument("--quick", action="store_true", help="fewer cases")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=_cmd_bench)

    _add_train(sub)
    _add_run_commands(sub)
    return parser


def _attach_negative_numbers(argv: list[str]) -> list[str]:
    """`--lr -1e-3` -> `--lr=-1e-3`: argparse takes a value that starts with "-" and is not a plain
    decimal (-1e-3, -inf) for an option, and then says the option lacks its argument. Attached, the
    value reaches the option's own check ("must be positive")."""
    out: list[str] = []
    for token in argv:
        prev = out[-1] if out else ""
        if token.startswith("-") and _is_number(token) and prev.startswith("-") and "=" not in prev \
                and not _is_number(prev):
            out[-1] = f"{prev}={token}"
        else:
            out.append(token)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(_attach_negative_numbers(argv))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
