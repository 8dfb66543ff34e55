"""The three seams stay one place each (issue 16): ISA facts only under csrc/kernels/, the conv
algorithm chosen only in csrc/conv/plan.c, no layer-class names in Sequential. Reads the source
tree beside these tests (a repository or an unpacked sdist)."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
pytestmark = pytest.mark.skipif(not (CSRC / "kernels").is_dir(),
                                reason=f"no C source tree at {CSRC} (tests run outside a checkout)")


def _c_files():
    return sorted(p for p in CSRC.rglob("*") if p.suffix in (".c", ".h"))


def _outside_kernels(pattern):
    """(file, line number) of each match of `pattern` in csrc/ outside csrc/kernels/."""
    hits = []
    for path in _c_files():
        if path.relative_to(CSRC).parts[0] == "kernels":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(pattern, line):
                hits.append((str(path.relative_to(ROOT)), n))
    return hits


@pytest.mark.parametrize("pattern", [r'target\("', r"FC_ISA_AVX", r"__builtin_cpu_supports", r"immintrin\.h"])
def test_isa_facts_live_under_kernels(pattern):
    assert _outside_kernels(pattern) == []


def test_the_tree_has_the_seams_files():
    for name in ("kernels/isa.h", "kernels/isa.c", "kernels/ctx.h", "conv/plan.c"):
        assert (CSRC / name).is_file(), name


def test_sequential_names_no_layer_class():
    """Fusion patterns are rows of fastconv/nn/fusion.py, not isinstance checks in Sequential."""
    import fastconv as fc
    from fastconv.nn import containers

    tree = ast.parse(pathlib.Path(containers.__file__).read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Sequential"]
    names = {n.id for n in ast.walk(cls) if isinstance(n, ast.Name)}
    layers = {n for n, v in vars(fc.nn).items()
              if isinstance(v, type) and issubclass(v, fc.Module) and v not in (fc.Module, fc.Sequential)}
    assert len(layers) > 10 and "Module" in names  # the walk sees the class's code
    assert names & layers == set()
