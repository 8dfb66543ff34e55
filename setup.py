"""Build fastconv's compiled core.

One extension, ``fastconv._kernels``: the Cython wrappers plus every C source
under ``csrc/`` (``include/fastconv.h``, the public C entry points; ``core/``,
``conv/``, ``pool/``, ``eltwise/``, ``norm/``, the op code by family;
``kernels/``, the micro-kernels per ISA). Portable flags only (``-O3``, no
``-march=native``): the SIMD micro-kernels under ``csrc/kernels/<isa>/`` get
their ISA flags file by file and are chosen at run time, so one wheel runs on
any x86-64 CPU.

OpenMP is detected by compiling and running a tiny program; without it the
build still succeeds, serial, and says so loudly.
"""

import glob
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")

# Flags for the ISA-specific micro-kernels, keyed by their folder under csrc/kernels/.
ISA_FLAGS = {
    "avx2": ["-mavx2", "-mfma"],
    "avx512": ["-mavx512f", "-mavx2", "-mfma"],
}
# Kernel families that give the same bits on every ISA (kernels/eltwise.h, kernels/batchnorm.h):
# in the ISA folders, their a * b + c is not contracted into an FMA (GCC's default under -mfma),
# so they round as the baseline build, which has no FMA to contract into.
ISA_EXACT_FP = ("eltwise_", "batchnorm_")
# The bf16 GEMM's sources (csrc/kernels/<folder>/*_bf16_*.c): no fused multiply-adds, whose
# single rounding the bf16 contract (csrc/kernels/bf16.h) does not have, and the bf16
# instructions in the folders that use them. Added to the folder's ISA_FLAGS.
BF16_FLAGS = {
    "ref": ["-ffp-contract=off"],
    "avx512": ["-ffp-contract=off", "-mavx512bf16"],
}

OPENMP_TEST = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel num_threads(2) reduction(+:n)
        n += 1;
        printf("%d\\n", n);
        return n == 2 ? 0 : 1;
    }
    """
)


def _c_sources():
    """The op code (every folder of csrc/ but kernels/), the ISA list (kernels/isa.c), the
    reference kernels (kernels/ref/), and on x86 each ISA folder of ISA_FLAGS; elsewhere only
    the reference table is built."""
    op_code = [f for f in glob.glob("csrc/**/*.c", recursive=True) if not f.startswith("csrc/kernels/")]
    sources = sorted(op_code) + sorted(glob.glob("csrc/kernels/*.c")) + sorted(glob.glob("csrc/kernels/ref/*.c"))
    if X86:
        for isa in ISA_FLAGS:
            sources += sorted(glob.glob(f"csrc/kernels/{isa}/*.c"))
    return sources


def _openmp_flags(compiler):
    """Return (compile, link) flags for OpenMP if a test program builds and runs."""
    if os.environ.get("FASTCONV_DISABLE_OPENMP"):
        return None
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":
        candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
    for cflags, lflags in candidates:
        tmp = tempfile.mkdtemp()
        try:
            src = os.path.join(tmp, "omp_test.c")
            with open(src, "w") as f:
                f.write(OPENMP_TEST)
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
            exe = os.path.join(tmp, "omp_test")
            # distutils links executables without LDFLAGS, which the extension gets: pass them,
            # or objects compiled with CFLAGS such as -fsanitize=... (.ci/sanitize) fail to link.
            compiler.link_executable(objs, exe, extra_postargs=lflags + shlex.split(os.environ.get("LDFLAGS", "")))
            out = subprocess.run([exe], capture_output=True, text=True, timeout=60)
            if out.returncode == 0:
                return cflags, lflags
        except Exception:  # any compile, link or run failure means "no OpenMP"
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return None


class BuildExt(build_ext):
    """Detect OpenMP, then add per-file ISA flags while compiling."""

    def build_extensions(self):
        omp = _openmp_flags(self.compiler)
        if omp is None:
            bar = "*" * 78
            print(
                f"\n{bar}\n* fastconv: OpenMP was NOT found. The kernels will be built SERIAL\n"
                "* (one thread). Install a compiler with OpenMP (gcc, or clang with libomp)\n"
                f"* and rebuild to get multi-threaded kernels.\n{bar}\n",
                file=sys.stderr,
            )
        cc = " ".join(self.compiler.compiler_so[:1]) if hasattr(self.compiler, "compiler_so") else "cc"
        for ext in self.extensions:
            if omp is not None:
                ext.extra_compile_args += omp[0]
                ext.extra_link_args += omp[1]
            flags = " ".join(ext.extra_compile_args)
            ext.define_macros += [
                ("FC_BUILD_FLAGS", '"%s"' % flags),
                ("FC_BUILD_CC", '"%s"' % cc),
            ]

        original = self.compiler._compile

        def compile_with_isa(obj, src, ext, cc_args, extra_postargs, pp_opts):
            extra = list(extra_postargs)
            folder = os.path.basename(os.path.dirname(src))
            if os.path.basename(os.path.dirname(os.path.dirname(src))) == "kernels":
                extra += ISA_FLAGS.get(folder, [])
                if os.path.basename(src).startswith(ISA_EXACT_FP):
                    extra.append("-ffp-contract=off")
                if "_bf16_" in os.path.basename(src):
                    extra += BF16_FLAGS.get(folder, [])
            return original(obj, src, ext, cc_args, extra, pp_opts)

        self.compiler._compile = compile_with_isa
        try:
            super().build_extensions()
        finally:
            self.compiler._compile = original


def _extension():
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    if X86:
        macros.append(("FC_X86_KERNELS", "1"))
    cflags = ["-O3", "-std=gnu11", "-fno-math-errno", "-Wall", "-Wno-unused-function"]
    if sysconfig.get_config_var("CC") and "clang" in sysconfig.get_config_var("CC"):
        cflags.append("-Wno-unknown-pragmas")
    return Extension(
        "fastconv._kernels",
        sources=["fastconv/_kernels.pyx"] + _c_sources(),
        # "fastconv.h" from include/; the rest by path from csrc/ ("core/fc_omp.h", "kernels/ctx.h")
        include_dirs=["csrc/include", "csrc", np.get_include()],
        define_macros=macros,
        extra_compile_args=cflags,
    )


setup(
    ext_modules=cythonize(
        [_extension()],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
