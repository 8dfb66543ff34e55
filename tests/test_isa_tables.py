"""The ISA tables (csrc/kernels/ctx.h): each SIMD table points the entries its
folder has code for at that code, so that an entry left out of
kernels/<isa>/ctx_<isa>.c (the table silently running the ISA below) fails here
rather than only in a benchmark."""

import pytest
from conftest import ISAS

from fastconv import _kernels

# The entries each SIMD folder has its own code for, and the table it starts from.
OWN = {
    "avx2": ("generic", ["gemm", "im2col_row", "col2im_channel", "pack_columns", "max_abs_bits",
                         "wg_input", "wg_output", "wg_output_pool", "wg_grad", "pool2x2_forward",
                         "pool2x2_backward", "direct_k8.forward", "direct_k8.dweight",
                         "direct_k16.forward", "direct_k16.dweight", "direct_wide.forward",
                         "direct_wide.dweight", "eltwise", "bn", "add_relu", "dw_plane", "dw_dweight_plane", "peak"]),
    # Not eltwise or pool2x2_*: AVX2's measured faster (kernels/avx512/ctx_avx512.c).
    "avx512": ("avx2", ["gemm", "im2col_row", "col2im_channel", "pack_columns", "max_abs_bits",
                        "wg_input", "wg_output", "wg_output_pool", "wg_grad",
                        "direct_k16.forward", "direct_k16.dweight",
                        "direct_wide.forward", "direct_wide.dweight", "bn", "add_relu",
                        "dw_plane", "dw_dweight_plane", "peak"]),
}


@pytest.mark.parametrize("isa", sorted(OWN))
def test_simd_tables_run_their_own_code(isa):
    if isa not in ISAS:
        pytest.skip(f"{isa} is not supported by this CPU and build (supported: {ISAS})")
    below, own = OWN[isa]
    mine, base = _kernels.isa_entries(isa), _kernels.isa_entries(below)
    assert set(own) <= set(mine)
    inherited = [entry for entry in own if mine[entry] == base[entry]]
    assert not inherited, f"{isa}'s table runs {below}'s code for {inherited}"


# The direct-convolution tiles a table has none of (the direct algorithm does
# not apply to those K there): the generic table has no float32 ones at all
# (its bf16 direct_bf16, emulated, is every table's).
NO_DIRECT = {"generic": ("direct_k", "direct_wide"), "avx2": (), "avx512": ()}


def test_every_table_fills_its_entries():
    """Every entry set, on every supported ISA, but the direct tiles of NO_DIRECT."""
    for isa in ISAS:
        table = _kernels.isa_entries(isa)
        empty = sorted(entry for entry, address in table.items() if address == 0)
        expected = [e for e in table if e.startswith(NO_DIRECT[isa])]  # () matches none
        assert empty == sorted(expected), isa
    assert _kernels.isa_entries() == _kernels.isa_entries(_kernels.get_isa())
