"""2-thread scaling of fastconv's workloads: each one timed at 1 and at 2
threads taking turns in one process (1 2 / 2 1 / ...), so that a change in
the machine's load hits both thread counts alike; prints a Markdown table of
the medians and the ratio t(1) / t(2). (Timing the two thread counts one
after the other, as ``fastconv bench --threads 1,2`` does, lets a slow
minute on a shared machine land on one of them only.)

    python bench/scaling.py                  # every conv workload, forward and backward
    python bench/scaling.py --only "train step" --reps 21
"""

import argparse

from fastconv.tools import bench as compare


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="workloads whose name contains TEXT (repeatable; default: conv)")
    p.add_argument("--reps", type=int, default=15, help="turns per thread count (default 15)")
    p.add_argument("--turn-ms", type=float, default=20.0, help="timed milliseconds per turn")
    args = p.parse_args(argv)
    import fastconv as fc

    compare.pin_malloc()
    only = args.only or ["conv "]
    print(f"threads 1 and 2 taking turns, {args.reps} turns each; median (min) ms per call\n")
    print("| workload | 1 thread ms | 2 threads ms | scaling |")
    print("|---|---|---|---|")
    for w in compare.workloads():
        if not any(t in w.name for t in only):
            continue
        fn = w.make["fastconv"]()

        def at(n, fn=fn):
            def call():
                fc.set_num_threads(n)
                return fn()
            return call
        t = compare.time_sides({1: at(1), 2: at(2)}, args.reps, args.turn_ms / 1e3)
        cells = [f"{compare._ms(t[n].median)} ({compare._ms(t[n].best)})" for n in (1, 2)]
        print(f"| {w.name} | {cells[0]} | {cells[1]} | {t[1].median / t[2].median:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
