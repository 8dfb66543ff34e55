"""Accuracy of bf16 mixed-precision training against float32: one model trained
twice from the same seed (the same initial weights, minibatch order and
augmentation draws), once in float32 and once under ``fc.autocast("bfloat16")``
(``Trainer(precision="bf16")``, which also evaluates in bf16), each scored on
the test split; prints both curves (train loss, validation accuracy per
epoch) and both test accuracies.

    python bench/bf16_accuracy.py                       # LeNet on the shipped digits, 10 epochs
    python bench/bf16_accuracy.py --data cifar10-jpg.tar.gz --arch cifar_small --epochs 2 \\
        --train-images 8000 --eval-images 2000          # a short CIFAR-10 run
    python bench/bf16_accuracy.py --data cifar10-jpg.tar.gz --arch resnet20 --epochs 30 --json r20.json

The data and its splits are those of ``fastconv train --data ...`` (its
``load_data``: digits gets a fixed 20% test split, a JPEG archive its
``test/`` folder; 10% of the rest validates). ``--train-images`` and
``--eval-images`` keep a random subset (seeded) of the training split and of
each of the validation and test splits, for short runs. Training is that of
``fastconv train``'s defaults: Adam (lr 2e-3, weight decay 1e-4), batch 32,
a cosine schedule, and the weights of the epoch with the best validation
loss restored at the end (the Trainer's rule), for both precisions alike.
Set ``OMP_NUM_THREADS`` (or ``--threads``) to share a machine politely.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

PRECISIONS = ("fp32", "bf16")


def subset(data, n: int | None, seed: int):
    """A random `n` of the Dataset `data` (all of it when `n` is None or not smaller)."""
    if n is None or n >= len(data):
        return data
    return data[np.sort(np.random.default_rng(seed).permutation(len(data))[:n])]


def train(data: dict, arch: str, precision: str, epochs: int, seed: int = 0, batch_size: int = 32,
          lr: float = 2e-3, augment: str | None = None) -> dict:
    """Train `arch` on data["train"] (validating on data["val"]) in `precision`
    and score it on data["test"]: {"history": per-epoch lists, "test": {"loss", "accuracy"}}."""
    import fastconv as fc
    from fastconv.data.augment import parse as parse_augment
    from fastconv.models import build_model, resolve_arch

    train_set = data["train"]
    fc.manual_seed(seed)
    model = build_model(resolve_arch(arch, train_set.num_classes), train_set.input_shape, train_set.num_classes)
    opt = fc.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    trainer = fc.Trainer(model, fc.SoftmaxCrossEntropy(), opt, fc.CosineAnnealingLR(opt, T_max=epochs),
                         batch_size=batch_size, seed=seed, progress=False, verbose=False, precision=precision,
                         augment=parse_augment(augment, train_set.input_shape))
    history = trainer.fit(train_set, data["val"], epochs=epochs)
    keys = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
    return {"history": {k: list(history[k]) for k in keys} | {"best_epoch": history["best_epoch"]},
            "test": trainer.evaluate(data["test"])}


def compare(data: dict, arch: str, epochs: int, **kwargs) -> dict:
    """{"fp32": train(...), "bf16": train(...)}: the same run in each precision."""
    return {p: train(data, arch, p, epochs, **kwargs) for p in PRECISIONS}


def report(results: dict, out=None) -> None:
    """The curves and the test accuracies as Markdown tables."""
    out = out or sys.stdout
    h32, h16 = (results[p]["history"] for p in PRECISIONS)
    print("| epoch | fp32 train loss | bf16 train loss | fp32 val acc | bf16 val acc |", file=out)
    print("|---|---|---|---|---|", file=out)
    for i, epoch in enumerate(h32["epoch"]):
        print(f"| {epoch} | {h32['train_loss'][i]:.4f} | {h16['train_loss'][i]:.4f} "
              f"| {100 * h32['val_accuracy'][i]:.2f}% | {100 * h16['val_accuracy'][i]:.2f}% |", file=out)
    a32, a16 = (100 * results[p]["test"]["accuracy"] for p in PRECISIONS)
    print(f"\n| test accuracy | fp32 | bf16 | bf16 - fp32 |\n|---|---|---|---|\n"
          f"| best epoch {h32['best_epoch']} / {h16['best_epoch']} | {a32:.2f}% | {a16:.2f}% "
          f"| {a16 - a32:+.2f} points |", file=out)


def main(argv=None) -> int:
    from fastconv.tools.args import nonneg_int, positive_int

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits", metavar="NAME|PATH",
                   help="digits, or a path as for fastconv train --data (default: %(default)s)")
    p.add_argument("--arch", default="lenet", metavar="NAME|SPEC", help="(default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=10, metavar="N", help="(default: %(default)s)")
    p.add_argument("--seed", type=nonneg_int, default=0, metavar="S", help="(default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="(default: %(default)s)")
    p.add_argument("--augment", metavar="LIST", help="as fastconv train --augment, e.g. crop4,flip (default: none)")
    p.add_argument("--train-images", type=positive_int, metavar="N", help="a random N of the training split")
    p.add_argument("--eval-images", type=positive_int, metavar="N",
                   help="a random N of each of the validation and test splits")
    p.add_argument("--threads", type=positive_int, metavar="N", help="kernel threads (default: OMP_NUM_THREADS, "
                   "else the CPUs)")
    p.add_argument("--json", metavar="PATH", help="also write the histories and test results as JSON")
    args = p.parse_args(argv)

    import fastconv as fc
    from fastconv.tools.bench import cpu_model
    from fastconv.tools.cli import load_data

    if args.threads:
        fc.set_num_threads(args.threads)
    cpu = time.process_time()
    data = load_data(args.data, None, 0.1)
    data = {"train": subset(data["train"], args.train_images, args.seed),
            "val": subset(data["val"], args.eval_images, args.seed + 1),
            "test": subset(data["test"], args.eval_images, args.seed + 2)}
    info = fc.info()
    print(f"{args.arch} on {args.data}: {len(data['train'])} training, {len(data['val'])} validation, "
          f"{len(data['test'])} test images; {args.epochs} epochs, seed {args.seed}, batch {args.batch_size}, "
          f"augment {args.augment or 'none'}; isa {info['isa']}, bf16 kernel {info['bf16_kernel']}, "
          f"{fc.get_num_threads()} thread(s)\n")
    results = compare(data, args.arch, args.epochs, seed=args.seed, batch_size=args.batch_size, augment=args.augment)
    report(results)
    print(f"\nCPU time of the whole script: {time.process_time() - cpu:.0f} s")
    if args.json:
        config = {k: v for k, v in vars(args).items() if k != "json"} | {"threads": fc.get_num_threads()}
        host = {"cpu": cpu_model(), "isa": info["isa"], "bf16_kernel": info["bf16_kernel"]}
        with open(args.json, "w") as f:
            json.dump({"config": config} | host | results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
