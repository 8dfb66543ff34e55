"""The ``fastconv`` command line. Exit codes: 0 success, 1 failure, 2 usage error.

    fastconv train                 a small CNN on the shipped digits -> runs/<name>/
    fastconv evaluate CHECKPOINT   loss, accuracy and confusion matrix of a checkpoint
    fastconv export CKPT --onnx F  the checkpoint's model as an ONNX file
    fastconv predict CKPT IMAGE... the top classes of PNG/JPEG files (or folders, or - for stdin)
    fastconv search                random hyperparameter search -> results table, best config
                                   (--workers N or --scheduler ADDRESS: trials on a Dask cluster)
    mpirun -n P fastconv train     data-parallel training over MPI (rank 0 writes the run folder)
    fastconv bench                 timings side by side with PyTorch and NumPy/OpenBLAS
    fastconv info                  build, CPU path, threads, and a kernel self-test
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import math
import os
import sys
import tempfile
import time

from fastconv.tools.args import (CommandError, UsageError, add_checkpoint_arguments, add_threads_option, check_threads,
                                 finite_float, fraction, nonneg_float, nonneg_int, open_fraction, positive_float,
                                 positive_int)

EPILOG_TRAIN = """\
examples:
  fastconv train                                   # digits, default CNN, ~10 s
  fastconv train --epochs 5 --lr 0.01 --optimizer sgd --out runs/quick
  fastconv train --arch conv8x3p1-relu-pool2-fc10 --sanity
  fastconv train --data mnist --data-dir ~/data/mnist --arch lenet
  fastconv train --data cifar10-jpg.tar.gz --arch cifar_small --augment crop4,flip
  fastconv train --config runs/search-1/best_config.toml
  fastconv train --resume --out runs/quick --epochs 10     # continue a stopped run

outputs in the run folder: best/ and last/ (checkpoints: model.safetensors with
PyTorch's keys, optimizer.safetensors, checkpoint.json), history.json,
config.toml, summary.json, curves.png, filters.png, layer_stats.png (the
pictures need matplotlib: pip install "fastconv[plot]").

"""

DATA_HELP = ("digits (shipped, 1,797 8x8 images), mnist or cifar10 (from --data-dir; nothing is downloaded), "
             "PATH.npz with arrays X, y [, X_test, y_test], or a folder (or .tar/.tar.gz of one) of class folders "
             "of PNG/JPEG images, with train/ and test/ when split")
LR_DEFAULTS = {"sgd": 0.02, "adam": 2e-3, "rmsprop": 1e-3, "adagrad": 1e-2}
CONFIG_MAX_BYTES = 2**20  # a config is a few dozen lines; anything bigger is not one


# -- config files (TOML) ---------------------------------------------------------------------


def _read_toml(path: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    from fastconv._guard import open_regular

    try:
        with open_regular(path, CommandError, "config file", CONFIG_MAX_BYTES) as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise CommandError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise CommandError(f"config file {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise CommandError(f"config file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except RecursionError:
        raise CommandError(f"config file {path} nests its values too deeply") from None


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def _write_toml(path: str, values: dict, header: str = "") -> None:
    from fastconv.train.checkpoint import atomic_write

    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    atomic_write(path, ("\n".join(lines) + "\n").encode())


def _apply_config(parser: argparse.ArgumentParser, path: str, skip=("config", "resume", "func")) -> None:
    """Make the options in TOML file ``path`` the parser's defaults (the command line still wins)."""
    values = _read_toml(path)
    actions = {a.dest: a for a in parser._actions if a.dest not in skip and a.dest != "help"}
    defaults = {}
    for key, value in values.items():
        dest = key.replace("-", "_")
        if dest not in actions:
            known = ", ".join(sorted(d.replace("_", "-") for d in actions))
            raise CommandError(f"config file {path}: unknown option {key!r} (known: {known})")
        action = actions[dest]
        if isinstance(value, dict):
            raise CommandError(f"config file {path}: {key} must be a value, not a table")
        if action.nargs == 0:  # a flag
            if not isinstance(value, bool):
                raise CommandError(f"config file {path}: {key} must be true or false; got {value!r}")
        elif action.type is not None:
            try:
                value = action.type(str(value) if not isinstance(value, str) else value)
            except (argparse.ArgumentTypeError, ValueError) as e:
                raise CommandError(f"config file {path}: {key}: {e}") from None
        if action.choices is not None and value not in action.choices:
            raise CommandError(f"config file {path}: {key} must be one of {', '.join(map(str, action.choices))}; "
                               f"got {value!r}")
        defaults[dest] = value
    parser.set_defaults(**defaults)


# -- shared pieces -----------------------------------------------------------------------------


def _set_threads(n):
    if n is not None:
        import fastconv

        check_threads(n)
        fastconv.set_num_threads(n)


def _makedirs(path: str) -> None:
    """os.makedirs without its recursion, which a path thousands of folders deep exhausts;
    a path the system cannot hold is refused before any folder of it is made."""
    full = os.fsencode(os.path.abspath(path))
    most = {}
    for name, default in (("PC_PATH_MAX", 4096), ("PC_NAME_MAX", 255)):
        try:
            most[name] = os.pathconf("/", name)
        except (AttributeError, ValueError, OSError):  # not POSIX
            most[name] = default
    longest = max(len(part) for part in full.split(b"/"))
    if len(full) >= most["PC_PATH_MAX"] or longest > most["PC_NAME_MAX"]:
        raise OSError(errno.ENAMETOOLONG, f"File name too long (the path has {len(full)} bytes, at most "
                      f"{most['PC_PATH_MAX'] - 1}; its longest name {longest}, at most {most['PC_NAME_MAX']})")
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path.rstrip("/\\"))
        path = parent if parent != path else ""
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:  # a file: the next mkdir, or the write test, says "Not a directory"
            pass


def _writable_dir(path: str) -> str:
    from fastconv._guard import short

    try:
        _makedirs(path)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CommandError(f"cannot write to the output folder {short(path, 200)}: {e.strerror or e}") from None
    return path


def _default_run_dir(prefix: str) -> str:
    base = os.path.join("runs", f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, i = base, 1
    while os.path.exists(path):
        i += 1
        path = f"{base}-{i}"
    return path


_ARCHIVES = (".tar", ".tar.gz", ".tgz")


def load_data(name: str, data_dir: str | None, val_fraction: float, normalizer=None) -> dict:
    """{"train", "val", "test", "normalizer", "name"}: the splits, normalized with the
    training split's per-channel statistics (or with ``normalizer``, e.g. a checkpoint's).

    The test split of digits (and of an .npz without X_test) is a fixed,
    stratified 20% (seed 0); the validation split is ``val_fraction`` of the
    rest (seed 0), so every run and every search trial sees the same splits.
    """
    from fastconv import data as D

    if name == "digits":
        rest, test = D.train_val_split(D.load_digits(), 0.2, seed=0)
    elif name in ("mnist", "cifar10"):
        if not data_dir:
            what = "the MNIST IDX files" if name == "mnist" else "cifar-10-batches-py (or -bin)"
            raise CommandError(f"--data {name} needs --data-dir DIR, the folder with {what}; nothing is downloaded")
        load = D.load_mnist if name == "mnist" else D.load_cifar10
        rest, test = load(data_dir, "train"), load(data_dir, "test")
    elif name.endswith(".npz") or name.endswith(_ARCHIVES) or os.path.isdir(name):
        parts = D.load_npz(name) if name.endswith(".npz") else D.load_image_folder(name)
        rest = parts["train"]
        test = parts.get("test")
        if test is None:
            rest, test = D.train_val_split(rest, 0.2, seed=0)
    else:
        raise CommandError("--data must be digits, mnist, cifar10, a path ending in .npz, an image folder or a "
                           f".tar/.tar.gz of one; got {name!r}")
    train, val = D.train_val_split(rest, val_fraction, seed=0)
    norm = normalizer or D.Normalizer.fit(train)
    return {"train": norm(train), "val": norm(val), "test": norm(test), "normalizer": norm,
            "name": name if name in ("digits", "mnist", "cifar10") else os.path.abspath(name)}


def _default_arch(data_name: str, input_shape) -> str:
    if data_name == "mnist":
        return "lenet"
    if data_name == "cifar10":
        return "cifar_small"
    return "digits" if min(input_shape[1:] or (8,)) < 16 else "lenet"


def _make_optimizer(name, params, lr, momentum, weight_decay):
    import fastconv as fc

    if name == "sgd":
        return fc.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return fc.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return fc.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return fc.Adagrad(params, lr=lr, weight_decay=weight_decay)


def _make_schedule(name, optimizer, epochs):
    import fastconv as fc

    if name == "none":
        return None
    if name == "cosine":
        return fc.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "step":
        return fc.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "exp":
        return fc.ExponentialLR(optimizer, gamma=0.9)
    if name == "invtime":
        return fc.InverseTimeLR(optimizer, decay_rate=0.5)
    return fc.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)


def _add_data_options(p, val=True):
    p.add_argument("--data", default="digits", metavar="NAME|PATH", help=f"the data set: {DATA_HELP} "
                   "(default: %(default)s)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the files of --data mnist or cifar10")
    if val:
        p.add_argument("--val-fraction", type=open_fraction, default=0.1, metavar="F",
                       help="share of the training data held out for validation (default: %(default)s)")


def _add_training_options(p):
    p.add_argument("--arch", default="auto", metavar="NAME|SPEC",
                   help="a built-in name (listed below: lenet, cifar_small, resnet20, vgg11, ...) or a spec "
                        "string such as conv8x5p2-relu-pool2-fc10; auto picks by data set (default: %(default)s)")
    p.add_argument("--optimizer", default="adam", choices=sorted(LR_DEFAULTS), help="(default: %(default)s)")
    p.add_argument("--lr", type=positive_float, metavar="LR",
                   help="learning rate (default: " + ", ".join(f"{k} {v:g}" for k, v in LR_DEFAULTS.items()) + ")")
    p.add_argument("--momentum", type=fraction, default=0.9, metavar="M",
                   help="momentum of sgd and rmsprop (default: %(default)s)")
    p.add_argument("--weight-decay", type=nonneg_float, default=1e-4, metavar="WD",
                   help="L2 regularization strength (default: %(default)s)")
    p.add_argument("--dropout", type=fraction, default=0.0, metavar="P",
                   help="put Dropout(P) before every fully connected layer (default: %(default)s, off)")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="(default: %(default)s)")
    p.add_argument("--seed", type=nonneg_int, default=0, metavar="S",
                   help="seeds weight initialization and minibatch order (default: %(default)s)")
    add_threads_option(p)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: convolutions and linear layers in bf16 mixed precision (fc.autocast; "
                        "emulated, slowly, on CPUs without AVX512_BF16) (default: %(default)s)")


def _arch_help():
    from fastconv.models import SPEC_HELP

    return SPEC_HELP


# -- fastconv train ------------------------------------------------------------------------------


def _train_options(args) -> dict:
    keys = ("data", "data_dir", "val_fraction", "arch", "optimizer", "lr", "momentum", "weight_decay", "dropout",
            "batch_size", "epochs", "schedule", "patience", "min_delta", "stop_at", "stop_worse", "stop_window",
            "stop_min_average", "monitor", "seed", "threads", "augment", "precision")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def _build(args, data, log):
    """(model, trainer) for the parsed options and the loaded data."""
    import fastconv as fc
    from fastconv.train import EarlyStopping, Trainer
    from fastconv.data.augment import parse as parse_augment
    from fastconv.models import build_model, resolve_arch

    train = data["train"]
    augment = parse_augment(args.augment, train.input_shape)
    arch = args.arch if args.arch != "auto" else _default_arch(args.data, train.input_shape)
    spec = resolve_arch(arch, train.num_classes)
    fc.manual_seed(args.seed)
    model = build_model(spec, train.input_shape, train.num_classes, dropout=args.dropout)
    lr = args.lr if args.lr is not None else LR_DEFAULTS[args.optimizer]
    opt = _make_optimizer(args.optimizer, model.parameters(), lr, args.momentum, args.weight_decay)
    sched = _make_schedule(args.schedule, opt, args.epochs)
    triggers = {"target": args.stop_at, "worse_epochs": args.stop_worse or None, "window": args.stop_window or None}
    stopper = EarlyStopping(patience=args.patience or None, min_delta=args.min_delta, monitor=args.monitor,
                            min_average_change=args.stop_min_average, **triggers) \
        if args.patience or any(v is not None for v in triggers.values()) else None
    meta = {"arch": spec, "input_shape": list(train.input_shape), "classes": train.classes, "dropout": args.dropout,
            "normalization": data["normalizer"].to_dict(), "data": data["name"],
            "data_dir": os.path.abspath(args.data_dir) if args.data_dir else None,
            "val_fraction": args.val_fraction, "config": _train_options(args)}
    trainer = Trainer(model, fc.SoftmaxCrossEntropy(), opt, sched, batch_size=args.batch_size,
                      early_stopping=stopper, checkpoint_dir=args.out, seed=args.seed, monitor=args.monitor,
                      progress=args.progress, metadata=meta, log=log, distributed=getattr(args, "mpi", None),
                      augment=augment, precision=args.precision)
    return model, trainer, spec


# What a run is: resuming with another value of one of these would train
# some other run from the middle of this one, so it is refused.
_RUN_OPTIONS = ("data", "val_fraction", "arch", "optimizer", "lr", "momentum", "weight_decay", "dropout",
                "batch_size", "schedule", "monitor", "seed", "augment")


def _check_resume_options(args, spec: str) -> None:
    """Refuse options that would change the run being resumed; say what the
    honoured ones (--epochs, the early-stopping options, --threads) change."""
    saved = _read_toml(os.path.join(args.out, "config.toml"))
    given = _train_options(args) | {"arch": spec}
    for key in _RUN_OPTIONS:
        if given.get(key) != saved.get(key):
            option = "--" + key.replace("_", "-")
            raise CommandError(f"--resume continues the run in {args.out} as configured ({key} = "
                               f"{saved.get(key)!r} in its config.toml); {option} {given.get(key)!r} would change it: "
                               "start a new run (another --out) instead")
    planned = saved.get("epochs")
    if planned is not None and args.epochs != planned:
        replanned = {"cosine": f"the cosine schedule now reaches its minimum at epoch {args.epochs}",
                     "step": f"the step schedule now drops every {max(1, args.epochs // 3)} epochs"}
        print(f"resuming with --epochs {args.epochs} (the run was planned for {planned})"
              + (f": {replanned[args.schedule]}, from the rate it gives the next epoch"
                 if args.schedule in replanned else ""))


def _sanity(args, data) -> int:
    model, trainer, spec = _build(args, data, print)
    print(f"sanity check: {spec}, {sum(p.data.size for p in model.parameters()):,} parameters")
    r = trainer.overfit_check(data["train"], n=20)
    gap = r["initial_loss"] - r["expected_initial_loss"]
    verdict = "ok" if r["initial_ok"] else (
        f"FAILED: {abs(gap):.2f} {'above' if gap > 0 else 'below'} it (more than 0.5): the initial scores are "
        "too large; check the output layer's initialization, the data's normalization and the loss")
    print(f"  loss before training {r['initial_loss']:.4f}; {r['expected_initial_loss']:.4f} is expected "
          f"(the loss of equal scores, ln(classes) for softmax) -> {verdict}")
    verdict = "ok: the network can fit a tiny set" if r["fits"] else \
        "FAILED: the loss did not reach ~0; check the learning rate, the model and the data before training on it all"
    print(f"  overfit {r['n']} examples, no weight decay, no dropout: loss {r['final_loss']:.4g} after "
          f"{r['steps']} steps, accuracy {100 * r['accuracy']:.0f}% -> {verdict}")
    print("sanity check " + ("passed" if r["passed"] else "FAILED"))
    return 0 if r["passed"] else 1


def _train(args) -> int:
    """Under mpirun (more than one rank) train data-parallel; ranks other than 0 print and write nothing."""
    from fastconv.train import distributed

    args.mpi = distributed.MPIDataParallel() if distributed.launched_by_mpi() else None
    if args.mpi is None or args.mpi.rank == 0:
        return _train_run(args, root=True)
    with contextlib.redirect_stdout(io.StringIO()):
        return _train_run(args, root=False)


def _train_run(args, root: bool) -> int:
    from fastconv.tools import plot
    from fastconv.train.checkpoint import atomic_write_json

    start = time.perf_counter()
    _set_threads(args.threads or (args.mpi.default_threads() if args.mpi else None))
    if args.lr is None:
        args.lr = LR_DEFAULTS[args.optimizer]  # recorded in config.toml and the checkpoints
    if args.resume:
        if not args.out:
            raise CommandError("--resume needs --out RUN_DIR, the folder of the run to continue")
        if not os.path.isfile(os.path.join(args.out, "config.toml")):
            raise CommandError(f"--resume: {args.out} is not a run folder (no config.toml in it)")
    if args.sanity:
        data = load_data(args.data, args.data_dir, args.val_fraction)
        return _sanity(args, data)
    if args.out is None:
        arch = args.arch if args.arch != "auto" else "auto"
        args.out = _default_run_dir(f"{os.path.splitext(os.path.basename(args.data))[0]}-{arch}"[:60])
        if args.mpi is not None:  # the name holds the time: rank 0's
            args.out = args.mpi.broadcast_text(args.out)
    elif not args.resume and os.path.exists(os.path.join(args.out, "last")):
        raise CommandError(f"{args.out} already holds a run; add --resume to continue it, or pick another --out")
    _writable_dir(args.out)
    data = load_data(args.data, args.data_dir, args.val_fraction)
    train, val, test = data["train"], data["val"], data["test"]
    model, trainer, spec = _build(args, data, print)
    if args.resume:
        _check_resume_options(args, spec)
    if root:  # on resume: the options it honours (epochs, stopping) are the run's from now on
        _write_toml(os.path.join(args.out, "config.toml"), _train_options(args) | {"arch": spec},
                    "fastconv train options of this run; reuse with: fastconv train --config config.toml")
    n_params = sum(p.data.size for p in model.parameters())
    print(f"data {os.path.basename(data['name'])}: {len(train)} train / {len(val)} val / {len(test)} test, "
          f"{train.num_classes} classes, images {'x'.join(map(str, train.input_shape))}")
    print(f"model {spec}: {n_params:,} parameters; {args.optimizer} lr {trainer.optimizer.param_groups[0]['lr']:g}, "
          f"batch {args.batch_size}, {args.epochs} epochs, schedule {args.schedule}; run folder {args.out}")
    history = trainer.fit(train, val, epochs=args.epochs, resume=args.resume)
    result = trainer.evaluate(test)
    best = history["best_epoch"]
    best_val = history["val_accuracy"][best - 1]
    pictures = []
    if not args.no_plots and root:
        try:
            pictures.append(plot.training_curves(history, os.path.join(args.out, "curves.png")))
            pictures.append(plot.filters(model, os.path.join(args.out, "filters.png")))
            pictures.append(plot.layer_stats(history, os.path.join(args.out, "layer_stats.png")))
        except plot.PlotUnavailable:
            print(f"pictures skipped: matplotlib is not installed ({plot.INSTALL_HINT})")
        except ValueError as e:  # e.g. no conv layer to show
            print(f"a picture was skipped: {e}")
    wall = time.perf_counter() - start
    if root:
        atomic_write_json(os.path.join(args.out, "summary.json"), {
            "test_accuracy": result["accuracy"], "test_loss": result["loss"], "val_accuracy": best_val,
            "best_epoch": best, "epochs_run": len(history["epoch"]), "stopped_early": history["stopped_early"],
            "wall_time_s": wall, "arch": spec, "parameters": n_params,
            "mpi_ranks": args.mpi.size if args.mpi else 1})
    correct = round(result["accuracy"] * len(test))
    stop = f" (early stop: {history['stop_reason']})" if history["stopped_early"] else ""
    print(f"best epoch {best} of {len(history['epoch'])}{stop}: val accuracy {100 * best_val:.1f}%; "
          f"weights of the best epoch restored")
    print(f"test accuracy {100 * result['accuracy']:.2f}% ({correct}/{len(test)}), test loss {result['loss']:.4f}")
    print(f"saved {os.path.join(args.out, 'best')} (checkpoint), history.json"
          + "".join(f", {os.path.basename(p)}" for p in pictures) + f"  [{wall:.1f}s]")
    return 0


def _checkpoint_path(path: str) -> str:
    """A run folder means its best/ checkpoint."""
    if os.path.isdir(os.path.join(path, "best")) or os.path.isdir(os.path.join(path, "best.old")):
        return os.path.join(path, "best")
    return path


# -- fastconv evaluate -------------------------------------------------------------------------------


def _evaluate(args) -> int:
    import numpy as np

    from fastconv.train import checkpoint as ckpt
    from fastconv.data import Dataset, Normalizer
    from fastconv.nn.losses import SoftmaxCrossEntropy
    from fastconv.train import Trainer, confusion_matrix
    from fastconv.models import load_model

    _set_threads(args.threads)
    path = _checkpoint_path(args.checkpoint)
    model, meta = load_model(path)
    user = meta["user"]
    if "normalization" not in user:
        raise CommandError(f"checkpoint {path} does not record the data's normalization; evaluate it in Python")
    name = args.data or user.get("data", "digits")
    data_dir = args.data_dir or user.get("data_dir")
    # Same split scheme as training; normalized with the training run's statistics.
    splits = load_data(name, data_dir, user.get("val_fraction", 0.1), Normalizer.from_dict(user["normalization"]))
    if args.split == "all":
        parts = [splits[k] for k in ("train", "val", "test")]
        dataset = Dataset(np.concatenate([p.X for p in parts]), np.concatenate([p.y for p in parts]),
                          parts[0].classes, parts[0].name)
    else:
        dataset = splits[args.split]
    if list(dataset.input_shape) != list(user["input_shape"]):
        raise CommandError(f"the checkpoint's model takes images of shape {tuple(user['input_shape'])}; "
                           f"--data {name} has {dataset.input_shape}")
    classes = user["classes"]
    if dataset.y.max() >= len(classes):
        raise CommandError(f"--data {name} has labels up to {dataset.y.max()}; the model knows {len(classes)} classes")
    trainer = Trainer(model, SoftmaxCrossEntropy(), None, batch_size=args.batch_size, verbose=False, progress=False)
    result = trainer.evaluate(dataset)
    pred = trainer.predict(dataset.X)
    cm = confusion_matrix(dataset.y, pred, len(classes))
    info = ckpt.read_metadata(path)
    print(f"checkpoint {path}: epoch {info['meta'].get('epoch')}, {user['arch']}")
    print(f"data {os.path.basename(str(name))}, {args.split} split: {len(dataset)} examples")
    print(f"loss {result['loss']:.4f}  accuracy {100 * result['accuracy']:.2f}% "
          f"({int(np.trace(cm))}/{len(dataset)})")
    print("confusion matrix (rows: true class, columns: predicted):")
    labels = [c[:8] for c in classes]
    width = max(4, max(len(str(cm.max())), max(map(len, labels))) + 1)
    print(" " * 9 + "".join(f"{c:>{width}}" for c in labels) + "   recall")
    for i, c in enumerate(labels):
        total = cm[i].sum()
        recall = f"{100 * cm[i, i] / total:6.1f}%" if total else "      -"
        print(f"{c:>8} " + "".join(f"{v:>{width}}" for v in cm[i]) + f"  {recall}")
    return 0


# -- fastconv export, fastconv predict (bodies in tools_onnx and tools_predict) ------------------------


def _export(args) -> int:
    from fastconv.tools.onnx import export_checkpoint

    print(export_checkpoint(_checkpoint_path(args.checkpoint), args.onnx))
    return 0


def _predict(args) -> int:
    from fastconv.tools.predict import run

    _set_threads(args.threads)
    return run(_checkpoint_path(args.checkpoint), args.images, top_k=args.top_k, batch_size=args.batch_size,
               resize=args.resize, as_json=args.json, progress=args.progress, skip_errors=args.skip_errors)


# -- fastconv search -------------------------------------------------------------------------------------


def _range(kind):
    """LO:HI (drawn: log-uniform or uniform), V (fixed), or A,B,C (a choice)."""
    def parse(text):
        from fastconv.tools.search import Choice, LogUniform, Uniform

        try:
            if ":" in text:
                lo, hi = (float(t) for t in text.split(":"))
                return LogUniform(lo, hi) if kind == "log" else Uniform(lo, hi)
            if "," in text:
                return Choice([int(t) if kind == "int" else float(t) for t in text.split(",")])
            return int(text) if kind == "int" else float(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected LO:HI, a value, or A,B,C; got {text!r} ({e})") from None
    parse.__name__ = f"{kind} range"
    return parse


def _search(args) -> int:
    from fastconv.tools import search as S
    from fastconv.models import build_model, resolve_arch

    if args.scheduler is None and args.workers is None:
        _set_threads(args.threads)
    out = args.out or _default_run_dir("search")
    _writable_dir(out)
    data = load_data(args.data, args.data_dir, args.val_fraction)
    train = data["train"]
    arch = args.arch if args.arch != "auto" else _default_arch(args.data, train.input_shape)
    spec = resolve_arch(arch, train.num_classes)
    build_model(spec, train.input_shape, train.num_classes)  # fail now, not in trial 1
    space = {"lr": args.lr, "weight_decay": args.weight_decay, "momentum": args.momentum,
             "dropout": args.dropout, "batch_size": args.batch_size}
    for k in ("momentum", "dropout"):
        v = space[k]
        values = [v.low, v.high] if hasattr(v, "low") else getattr(v, "values", [v])
        lo, hi = min(values), max(values)
        if not (0 <= lo and hi < 1):
            raise CommandError(f"--{k} values must be in [0, 1); got {v}")

    input_shape, num_classes = train.input_shape, train.num_classes  # not `train`: build travels to Dask workers

    def build(config):
        import fastconv as fc

        model = build_model(spec, input_shape, num_classes, dropout=config["dropout"])
        opt = _make_optimizer(args.optimizer, model.parameters(), config["lr"], config["momentum"],
                              config["weight_decay"])
        return model, fc.SoftmaxCrossEntropy(), opt

    train, val, scored = data["train"], data["val"], "val accuracy"
    if args.folds:  # the folds replace the validation split: cross-validate on all the training data
        import numpy as np

        from fastconv.data import Dataset

        if not 2 <= args.folds <= len(train) + len(val):
            raise CommandError(f"--folds must be at least 2 and at most the {len(train) + len(val):,} training "
                               f"examples; got {args.folds}")

        train = Dataset(np.concatenate([train.X, val.X]), np.concatenate([train.y, val.y]), train.classes, train.name)
        val, scored = None, f"mean val accuracy over {args.folds} folds"
    where = ""
    if args.scheduler or args.workers:
        where = f" on the Dask cluster at {args.scheduler}" if args.scheduler else \
            f" on a local Dask cluster of {args.workers} workers"
        where += f", {args.threads or 1} kernel thread(s) per trial"
    print(f"random search: {args.trials} trials x {args.epochs} epochs of {spec} ({args.optimizer}) on "
          f"{os.path.basename(data['name'])}{where}, scored by {scored}; results in {out}")
    result = S.random_search(build, space, args.trials, train, val, epochs=args.epochs,
                             seed=args.seed, out_dir=out, scheduler=args.scheduler, workers=args.workers,
                             threads=args.threads, folds=args.folds)
    best = result.best
    if best["status"] != "ok":
        raise CommandError(f"every trial diverged; lower the --lr range (results in {out})")
    config = {"data": args.data, "data_dir": args.data_dir, "val_fraction": args.val_fraction, "arch": spec,
              "optimizer": args.optimizer, **{k: v for k, v in result.best_config.items()}, "seed": best["seed"]}
    config["batch_size"] = int(config["batch_size"])
    _write_toml(os.path.join(out, "best_config.toml"), config,
                f"best of {args.trials} trials ({scored} {100 * best['val_accuracy']:.2f}% after "
                f"{args.epochs} epochs); train with: fastconv train --config best_config.toml")
    print("top trials:")
    for t in result.trials[:5]:
        shown = "  ".join(f"{k} {S._fmt(v)}" for k, v in t["config"].items())
        acc = f"{100 * t['val_accuracy']:.1f}%" if t["val_accuracy"] is not None else t["status"]
        print(f"  #{t['rank']} trial {t['trial']}: val acc {acc}  {shown}")
    print(f"best config: {os.path.join(out, 'best_config.toml')}\n"
          f"train it:    fastconv train --config {os.path.join(out, 'best_config.toml')}")
    return 0


# -- fastconv bench ----------------------------------------------------------------------------------


def _bench(args) -> int:
    from fastconv.tools import bench as compare

    return compare.run(args)


# -- fastconv info ------------------------------------------------------------------------------------


def _info(args) -> int:
    from fastconv.tools.info import conv_plan, info, self_test
    from fastconv.models import build_model

    for key, value in info().items():
        if value != "":
            print(f"{key:16s} {value}")
    model = build_model("cifar_small", (3, 32, 32), 10)
    model[0].needs_input_grad = False  # as fastconv train runs it: nobody reads the images' gradient
    for precision, label in (("float32", ""), ("bfloat16", ", bf16 (--precision bf16)")):
        print(f"{'conv plan':16s} cifar_small at batch 128{label} (forward / dx / dW):")
        for row in conv_plan(model, (128, 3, 32, 32), precision=precision):
            chosen = " / ".join(row[d][0] if row[d] else "-" for d in ("forward", "dx", "dweight"))
            print(f"{'':16s}   {row['layer']}: {row['x_shape']} -> {row['weight_shape'][0]}, {chosen}")
    errors = self_test()
    worst = max(errors.values())
    status = "ok" if worst < 1e-3 else "FAILED"
    isas = sorted({key.split("/")[0] for key in errors})
    print(f"{'self-test':16s} {status} (max abs error {worst:.2e} over {len(errors)} kernel and algorithm "
          f"checks on {', '.join(isas)})")
    return 0 if status == "ok" else 1


# -- the parser -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastconv", description="Train CNNs on the CPU at native speed.",
        epilog="Run 'fastconv COMMAND --help' for a command's options. Exit codes: 0 success, 1 failure, "
               "2 usage error.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("train", help="train a CNN (default: a small one on the shipped digits)",
                       description="Train a CNN, keep the best weights, and draw the curves.\nWith no options: a "
                                   "small CNN on the shipped 8x8 digits, written to runs/<name>/.",
                       epilog=EPILOG_TRAIN + _arch_help(), formatter_class=raw)
    _add_data_options(p)
    _add_training_options(p)
    p.add_argument("--epochs", type=positive_int, default=20, metavar="N", help="(default: %(default)s)")
    p.add_argument("--schedule", default="cosine", choices=["none", "cosine", "step", "exp", "invtime", "plateau"],
                   help="learning-rate schedule, stepped per epoch (default: %(default)s)")
    p.add_argument("--patience", type=nonneg_int, default=10, metavar="N",
                   help="early stopping: stop after N epochs without improvement of --monitor by more than "
                        "--min-delta; 0 = off (default: %(default)s)")
    p.add_argument("--min-delta", type=nonneg_float, default=0.0, metavar="D",
                   help="the least change of --monitor that counts as an improvement (default: %(default)s)")
    p.add_argument("--stop-at", type=finite_float, metavar="V",
                   help="early stopping: stop once --monitor reaches V (e.g. 0.99 for val_accuracy)")
    p.add_argument("--stop-worse", type=nonneg_int, default=0, metavar="N",
                   help="early stopping: stop after --monitor got worse N epochs in a row; 0 = off")
    p.add_argument("--stop-window", type=nonneg_int, default=0, metavar="N",
                   help="early stopping: stop when --monitor improved by less than --stop-min-average per "
                        "epoch on average over the last N epochs; 0 = off")
    p.add_argument("--stop-min-average", type=nonneg_float, default=0.0, metavar="D",
                   help="the average improvement per epoch --stop-window asks for (default: %(default)s)")
    p.add_argument("--monitor", default="val_loss", choices=["val_loss", "val_accuracy"],
                   help="metric that picks the best epoch and drives early stopping (default: %(default)s)")
    p.add_argument("--augment", metavar="LIST",
                   help="augment each training minibatch: comma-separated cropP (random crop of the image size "
                        "after zero-padding P pixels), flip (horizontal, p 0.5) or flipP; e.g. crop4,flip "
                        "(default: none)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<data>-<arch>-<date-time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where its last checkpoint stopped")
    p.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file (key = value, names as "
                   "the options without --); the command line wins")
    p.add_argument("--sanity", action="store_true",
                   help="only run the sanity check: overfit 20 examples without regularization (exit 1 if it fails)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG pictures")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar per epoch (default: when the output is a terminal)")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="loss, accuracy and confusion matrix of a checkpoint",
                       description="Evaluate a checkpoint written by 'fastconv train' (a run folder or its best/ "
                                   "or last/ folder) on the same data split scheme.")
    add_checkpoint_arguments(p, batch_size=256)
    p.add_argument("--data", metavar="NAME|PATH", help=f"{DATA_HELP} (default: the data it was trained on)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the files of --data mnist or cifar10")
    p.add_argument("--split", default="test", choices=["test", "val", "train", "all"], help="(default: %(default)s)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("export", help="write a checkpoint's model as an ONNX file",
                       description="Write the model of a checkpoint as an ONNX file (opset 17, dynamic batch "
                                   "axis), with its class names, input shape and normalization as metadata. "
                                   "Needs the onnx package: pip install \"fastconv[onnx]\".")
    add_checkpoint_arguments(p)
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the file to write")
    p.set_defaults(func=_export)

    p = sub.add_parser("predict", help="the top classes of a checkpoint's model on PNG/JPEG files",
                       description="Classify PNG/JPEG files with a checkpoint's model: each image is read as "
                                   "grayscale or RGB (as the model takes), scaled to [0, 1] and normalized with "
                                   "the training data's statistics. Images of another size than the model's "
                                   "input are refused unless --resize. Needs Pillow: pip install "
                                   "\"fastconv[images]\".",
                       epilog="examples:\n  fastconv predict runs/digits photo.png scans/\n"
                              "  find shots -name '*.jpg' | fastconv predict runs/cifar - --resize --json\n",
                       formatter_class=raw)
    add_checkpoint_arguments(p, batch_size=64)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="PNG/JPEG files, folders (searched recursively, in sorted order, hidden entries skipped), "
                        "or - for paths on stdin")
    p.add_argument("--top-k", type=positive_int, default=3, metavar="K", help="classes shown per image "
                   "(default: %(default)s)")
    p.add_argument("--resize", action="store_true", help="scale images to the model's input size instead of "
                   "refusing those of another size")
    p.add_argument("--skip-errors", action="store_true",
                   help="report a missing, unreadable or undecodable file (or one of the wrong size) on stderr "
                        "and go on with the others, instead of stopping at it; exit 1 only if every file failed")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal and there is more than "
                        "one batch)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("search", help="random hyperparameter search; writes a results table and the best config",
                       description="Random hyperparameter search: random draws, not a grid; the learning rate\n"
                                   "and the weight decay on a log scale. Each trial trains a few epochs.\n\n"
                                   "ranges: LO:HI is drawn (log-uniform for --lr and --weight-decay, uniform for\n"
                                   "--momentum and --dropout), a single value is fixed, A,B,C is a choice.\n\n"
                                   "writes results.csv and results.json (trials ranked by validation accuracy,\n"
                                   "with their seeds) and best_config.toml, for 'fastconv train --config'.",
                       formatter_class=raw,
                       epilog="examples:\n  fastconv search --trials 20 --epochs 5 --lr 1e-4:1e-1 --batch-size 32,64\n"
                              "  fastconv search --trials 20 --workers 2              # 2 trials at a time, Dask\n"
                              "  fastconv search --trials 200 --scheduler tcp://10.0.0.5:8786 --threads 4\n")
    _add_data_options(p)
    p.add_argument("--arch", default="auto", metavar="NAME|SPEC", help="as for train (default: %(default)s)")
    p.add_argument("--optimizer", default="sgd", choices=sorted(LR_DEFAULTS), help="(default: %(default)s)")
    p.add_argument("--trials", type=positive_int, default=10, metavar="N", help="(default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=5, metavar="N", help="per trial (default: %(default)s)")
    p.add_argument("--lr", type=_range("log"), default="1e-3:3e-1", metavar="LO:HI", help="(default: %(default)s)")
    p.add_argument("--weight-decay", type=_range("log"), default="1e-6:1e-2", metavar="LO:HI",
                   help="(default: %(default)s)")
    p.add_argument("--momentum", type=_range("uniform"), default="0.5:0.95", metavar="LO:HI",
                   help="(default: %(default)s)")
    p.add_argument("--dropout", type=_range("uniform"), default="0", metavar="LO:HI",
                   help="(default: %(default)s)")
    p.add_argument("--batch-size", type=_range("int"), default="32,64", metavar="A,B", help="(default: %(default)s)")
    p.add_argument("--seed", type=nonneg_int, default=0, metavar="S",
                   help="seeds the draws (and the folds); trial i uses seed S+i (default: %(default)s)")
    p.add_argument("--folds", type=positive_int, metavar="K",
                   help="cross-validate: train each trial on the K stratified folds of the training data "
                        "(--val-fraction is then unused) and score it by its mean validation accuracy")
    add_threads_option(p, help="kernel threads of each trial (default: OMP_NUM_THREADS, else the CPUs this "
                               "process may use; 1 on a Dask cluster)")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="run the trials on a local Dask cluster of N worker processes (needs fastconv[dask])")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the trials on the Dask cluster at ADDRESS, e.g. tcp://10.0.0.5:8786 "
                        "(needs fastconv[dask])")
    p.add_argument("--out", metavar="DIR", help="results folder (default: runs/search-<date-time>)")
    p.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file; the command line wins")
    p.set_defaults(func=_search)

    p = sub.add_parser("bench", help="time fastconv against PyTorch and NumPy/OpenBLAS side by side",
                       description="The benchmark workloads (sgemm, conv layers, max-pool, ReLU, whole "
                                   "nets: the README's tables) timed in one process, taking turns with PyTorch (channels_last and "
                                   "NCHW, when installed) and NumPy/OpenBLAS; prints a Markdown table. Also "
                                   "python bench/compare.py. Per-kernel suites: pytest bench/.")
    from fastconv.tools.bench import add_arguments

    add_arguments(p)
    p.set_defaults(func=_bench)

    p = sub.add_parser("info", help="build, CPU and threading information, and a kernel self-test")
    p.set_defaults(func=_info)
    return parser


def _subparser(parser, name):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def exit_if_this_command(message: str) -> None:
    """When this process is the fastconv command (its console script, or python -m
    fastconv), print `message` as a usage error and exit with code 2. For what fails
    ``import fastconv`` before main() can catch it: a bad FASTCONV_ISA or FASTCONV_BACKEND."""
    argv, orig = getattr(sys, "argv", None) or [""], getattr(sys, "orig_argv", [])
    # While python -m runs a package's __init__, argv[0] is "-m" and orig_argv names the module.
    module = orig[orig.index("-m") + 1] if argv[0] == "-m" and "-m" in orig[:-1] else None
    if module in ("fastconv", "fastconv.tools.cli") or os.path.basename(argv[0]) == "fastconv":
        print(f"fastconv: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv=None) -> int:
    parser = build_parser()
    if argv is None and sys.argv[1:2] == ["bench"]:  # OpenBLAS must see its settings at load
        from fastconv.tools.bench import reexec_for_openblas

        reexec_for_openblas(sys.argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    where = f"fastconv {args.command}"
    try:
        sub = _subparser(parser, args.command)
        config = getattr(args, "config", None)
        if args.command == "train" and args.resume and args.out and not config:
            config = os.path.join(args.out, "config.toml") if os.path.isfile(os.path.join(args.out, "config.toml")) \
                else None
        if config:  # options from the file become defaults; parse again so the command line wins
            _apply_config(sub, config)
            args = parser.parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        resume = f"; continue with: fastconv train --resume --out {args.out}" if getattr(args, "out", None) and \
            args.command == "train" else ""
        print(f"{where}: interrupted{resume}", file=sys.stderr)
        return 130
    except (CommandError, ValueError, TypeError, OSError, KeyError, RuntimeError, ArithmeticError, ImportError,
            MemoryError) as e:
        message = str(e) if not isinstance(e, KeyError) else str(e.args[0] if e.args else e)
        if isinstance(e, OSError) and e.filename and e.strerror:
            message = f"{e.filename}: {e.strerror}"
        if isinstance(e, MemoryError) and not isinstance(e, ValueError):  # one the guards could not foresee
            message = f"out of memory: {message or 'an allocation failed'}"
        message = " ".join(message.split())[:2000]  # one line, of bounded length
        print(f"{where}: error: {message}", file=sys.stderr)
        from fastconv.train.distributed import abort_mpi_job

        code = 2 if isinstance(e, UsageError) else 1
        abort_mpi_job(code)  # under mpirun the other ranks may be waiting for this one
        return code


if __name__ == "__main__":
    sys.exit(main())
