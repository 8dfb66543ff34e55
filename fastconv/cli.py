"""The ``fastconv`` command line. Exit codes: 0 success, 1 failure, 2 usage error."""

from __future__ import annotations

import argparse
import sys


def _info(args) -> int:
    from fastconv.info import info, self_test

    for key, value in info().items():
        if value != "":
            print(f"{key:16s} {value}")
    errors = self_test()
    worst = max(errors.values())
    status = "ok" if worst < 1e-3 else "FAILED"
    print(f"{'self-test':16s} {status} (max abs error {worst:.2e} over {len(errors)} kernels)")
    return 0 if status == "ok" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastconv", description="Train CNNs on the CPU at native speed.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="build, CPU and threading information, and a kernel self-test")
    p.set_defaults(func=_info)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as e:
        print(f"fastconv {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
