"""fastconv against PyTorch (channels_last and NCHW) and NumPy/OpenBLAS, side
by side in one process: a Markdown table of the workloads of workloads.md.

    python bench/compare.py --threads 1,2            # everything, ~10 min on 2 cores
    python bench/compare.py --only maxpool --fairness
    fastconv bench --threads 1,2                      # the same, installed

The harness is ``fastconv.tools.bench`` (so that ``fastconv bench`` has it when
installed); see its docstring for the pitfalls it handles. Run from outside
the repository root or with fastconv installed non-editable.
"""

import os
import sys

# OpenBLAS reads this once, when NumPy loads: set it before anything imports NumPy.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

if __name__ == "__main__":
    from fastconv.tools.bench import main

    sys.exit(main())
