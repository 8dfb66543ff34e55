"""bf16 Winograd against the bf16 GEMM algorithms on the 3x3 layers of ResNet-20 and
cifar_small: forward, dx + dW, and dW alone, each forced to Winograd and under auto's
choice with Winograd off (implicit im2col forward, im2col backward), the variants taking
turns, medians in ms (the A/B that conv/plan.c's bf16 Winograd rule quotes).

    python bench/bf16_winograd.py --threads 1,2 --reps 15
"""

import argparse
import time

import numpy as np

from fastconv import _kernels as K

SHAPES = [(128, 16, 32, 16), (128, 32, 16, 32), (128, 64, 8, 64), (128, 32, 16, 64), (128, 64, 8, 128)]
MODES = ("winograd", "no-winograd")


def _ops(n, c, hw, k):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, hw, hw), dtype=np.float32)
    w = rng.standard_normal((k, c, 3, 3), dtype=np.float32)
    dy = rng.standard_normal((n, k, hw, hw), dtype=np.float32)
    bias = np.zeros(k, np.float32)
    return {"forward": lambda: K.conv2d_forward(x, w, bias, 1, 1, precision="bfloat16"),
            "dx + dW": lambda: K.conv2d_backward(x, w, dy, 1, 1, precision="bfloat16"),
            "dW": lambda: K.conv2d_backward(x, w, dy, 1, 1, need_dx=False, precision="bfloat16")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: %(default)s)")
    ap.add_argument("--reps", type=int, default=15, help="timed reps of each variant (default: %(default)s)")
    args = ap.parse_args(argv)
    previous = K.set_conv_algorithm("auto")
    try:
        for threads in (int(t) for t in args.threads.split(",")):
            K.set_num_threads(threads)
            print(f"threads {threads}: Winograd / Winograd off, medians in ms")
            for n, c, hw, k in SHAPES:
                cells = []
                for op, run in _ops(n, c, hw, k).items():
                    times = {m: [] for m in MODES}
                    for rep in range(args.reps + 2):  # 2 warm-up turns
                        for mode in MODES:
                            K.set_conv_algorithm(mode)
                            t0 = time.perf_counter()
                            run()
                            if rep >= 2:
                                times[mode].append(1e3 * (time.perf_counter() - t0))
                    wg, off = (float(np.median(times[m])) for m in MODES)
                    cells.append(f"{op} {wg:.2f} / {off:.2f} ({wg / off:.2f}x)")
                print(f"  {n}x{c}x{hw}x{hw}->{k}: " + ", ".join(cells), flush=True)
    finally:
        K.set_conv_algorithm(previous)


if __name__ == "__main__":
    main()
