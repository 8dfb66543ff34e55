"""The convolution planner (csrc/conv/plan.c): the algorithm modes of
``set_conv_algorithm``, every algorithm forced against the NumPy twin on
every ISA x {1, 2} threads, forced algorithms that do not apply falling back
to auto's choice, ``plan_conv2d`` saying what runs, ``fc.conv_plan`` of a
model, and the self-test reaching every algorithm."""

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from test_conv2d import Conv, check_backward, check_forward
from conftest import conv_algorithm

import fastconv as fc
from fastconv import _kernels
from fastconv.tools.info import CONV_CASES, self_test


# One shape per algorithm auto picks (direct where the ISA has its tiles),
# and edges: a padding beyond kh - 1 (dx's convolution has negative
# padding), a rectangular kernel and stride, a 1x1 with C < K.
SHAPES = {
    "direct-k8": Conv(3, 4, 9, 11, 8, 5, 5, (1, 1), (2, 2)),
    "direct-k16": Conv(2, 6, 8, 7, 16, 3, 3, (1, 1), (1, 1)),
    # AVX-512's K = 32 and strided tiles
    "direct-k32": Conv(2, 3, 9, 8, 32, 3, 3, (1, 1), (1, 1)),
    "direct-strided": Conv(2, 3, 15, 13, 16, 7, 7, (2, 2), (3, 3)),
    "winograd": Conv(4, 16, 16, 16, 16, 3, 3, (1, 1), (1, 1)),
    "pointwise": Conv(2, 12, 7, 9, 20, 1, 1, (1, 1), (0, 0)),
    "implicit": Conv(2, 3, 10, 9, 5, 3, 3, (1, 1), (1, 1)),
    "strided": Conv(2, 3, 15, 13, 6, 5, 5, (2, 2), (2, 2)),
    "wide-padding": Conv(2, 5, 6, 7, 4, 3, 3, (1, 1), (3, 2)),
    "rect": Conv(1, 5, 9, 12, 7, 2, 3, (1, 2), (1, 0)),
}
MODES = ("auto",) + _kernels.CONV_ALGORITHMS


def plan_of(conv, mode="auto", need_dx=True):
    return _kernels.plan_conv2d((conv.n, conv.c, conv.h, conv.w), (conv.k, conv.c, conv.kh, conv.kw),
                                conv.stride, conv.padding, need_dx=need_dx, mode=mode)


def test_modes_validate_and_return_the_previous_mode():
    assert _kernels.get_conv_algorithm() == "auto"
    with conv_algorithm("im2col"):
        assert _kernels.get_conv_algorithm() == "im2col"
        assert _kernels.set_conv_algorithm("no-winograd") == "im2col"
        assert fc.get_conv_algorithm() == "no-winograd"
    assert _kernels.get_conv_algorithm() == "auto"
    for bad in ("sometimes", "no-im2col", "Winograd", None, 1):
        with pytest.raises(ValueError, match=r"set_conv_algorithm: `mode` must be one of \('auto', 'direct'"):
            _kernels.set_conv_algorithm(bad)
    assert _kernels.get_conv_algorithm() == "auto"


def test_set_winograd_is_a_deprecated_alias():
    """'never', 'auto', 'always' are 'no-winograd', 'auto', 'winograd', and
    the previous mode comes back in the old words (or as set_conv_algorithm
    names one the old words cannot)."""
    with pytest.warns(DeprecationWarning, match="set_conv_algorithm"):
        assert _kernels.set_winograd("never") == "auto"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert _kernels.get_conv_algorithm() == "no-winograd"
            assert _kernels.set_winograd("always") == "never"
            assert _kernels.get_conv_algorithm() == "winograd"
            _kernels.set_conv_algorithm("direct")
            assert _kernels.set_winograd("auto") == "direct"
            with pytest.raises(ValueError, match="set_winograd: `mode` must be one of"):
                _kernels.set_winograd("sometimes")
    finally:
        _kernels.set_conv_algorithm("auto")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", SHAPES)
def test_every_mode_matches_the_reference(isa_threads, rng, name, mode):
    """Forward (with the fused ReLU), conv + pool and backward of every
    shape under every mode: a forced algorithm where it applies, auto's
    choice where it does not."""
    conv = SHAPES[name]
    x, weight, bias, dy = conv.arrays(rng)
    with conv_algorithm(mode):
        check_forward(conv, x, weight, bias, relu=True)
        check_backward(conv, x, weight, dy, need_dx=True)
        check_backward(conv, x, weight, dy, need_dx=False)
        if min(conv.out) >= 2:
            y, argmax = _kernels.conv2d_maxpool_forward(x, weight, bias, conv.stride, conv.padding)
            pooled, pooled_argmax = _kernels.maxpool2d_forward(
                _kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding), 2, 2, 0)
            np.testing.assert_array_equal(y, pooled)
            np.testing.assert_array_equal(argmax, pooled_argmax)


def outputs(conv, x, weight, bias, dy):
    return (_kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding),
            *_kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding),
            *_kernels.conv2d_backward(x, weight, dy, conv.stride, conv.padding, need_dx=False)[1:])


@pytest.mark.parametrize("name", SHAPES)
def test_the_plan_says_what_runs(isa_threads, rng, name):
    """Under auto, each direction's output has the bits of the algorithm
    plan_conv2d names for it, forced; forcing an algorithm that does not
    apply (plan_conv2d names another) gives auto's bits, never an error."""
    conv = SHAPES[name]
    x, weight, bias, dy = conv.arrays(rng)
    auto = outputs(conv, x, weight, bias, dy)
    plan, plan_dw = plan_of(conv), plan_of(conv, need_dx=False)
    for index, algorithm in ((0, plan["forward"][0]), (1, plan["dx"][0]), (2, plan["dweight"][0]),
                             (4, plan_dw["dweight"][0])):
        with conv_algorithm(algorithm):
            np.testing.assert_array_equal(outputs(conv, x, weight, bias, dy)[index], auto[index],
                                          err_msg=f"output {index} of {algorithm}")
    for mode in _kernels.CONV_ALGORITHMS:
        forced = plan_of(conv, mode)
        if all(forced[d][0] != mode for d in ("forward", "dx", "dweight")):
            assert [forced[d][0] for d in ("forward", "dx", "dweight")] == [
                plan[d][0] for d in ("forward", "dx", "dweight")]
            assert forced["forward"][1].startswith(f"{mode} (forced) ")
            with conv_algorithm(mode):
                for got, want in zip(outputs(conv, x, weight, bias, dy), auto):
                    np.testing.assert_array_equal(got, want, err_msg=mode)


def test_auto_picks_by_the_documented_rules():
    """The measured rules: direct for K = 8 or 16 at unit stride (where the
    ISA has its tiles: not the reference table of 'generic'), Winograd for
    3x3 with C, K >= 16 and 256 tiles, x as the columns of a 1x1, implicit
    im2col at unit stride, im2col when strided (direct, where the ISA has the
    tiles, for strided layers and K = 32 with C < 16); dx as a convolution when
    C >= K; dW by Winograd only when dx needs no col2im."""
    previous = _kernels.get_isa()
    try:
        for isa in _kernels.supported_isas():
            _kernels.set_isa(isa)
            direct = "direct" if isa != "generic" else "im2col"
            lenet2 = plan_of(Conv(64, 6, 14, 14, 16, 5, 5, (1, 1), (0, 0)))
            assert lenet2["forward"][0] == ("direct" if isa != "generic" else "implicit_im2col")
            assert lenet2["dweight"][0] == direct
            wide = plan_of(Conv(128, 32, 16, 16, 64, 3, 3, (1, 1), (1, 1)))
            assert [wide[d][0] for d in ("forward", "dx", "dweight")] == ["winograd"] * 3
            assert "C = 32, K = 64 >= 16, 8192 tiles >= 256" in wide["forward"][1]
            assert plan_of(Conv(4, 32, 16, 16, 64, 3, 3, (1, 1), (1, 1)))["forward"][0] == "winograd"
            small = plan_of(Conv(1, 32, 16, 16, 64, 3, 3, (1, 1), (1, 1)))
            assert small["forward"][0] == "implicit_im2col" and "64 tiles < 256" in small["forward"][1]
            # The first layers and strided convs: direct where the ISA has the tiles
            # (AVX2 and AVX-512: K = 16 at unit stride, K = 32 with C < 16, and
            # strides other than 1), else the GEMM path.
            wide_tiles = isa != "generic"
            first = plan_of(Conv(128, 3, 32, 32, 32, 3, 3, (1, 1), (1, 1)))
            if wide_tiles:
                assert [first[d][0] for d in ("forward", "dx", "dweight")] == ["direct", "im2col", "direct"]
                assert "K = 32 output channels at unit stride, C < 16" in first["forward"][1]
            else:
                assert [first[d][0] for d in ("forward", "dx", "dweight")] == ["implicit_im2col", "im2col", "im2col"]
                assert "C = 3 < 16" in first["forward"][1]
            one = plan_of(Conv(128, 64, 8, 8, 32, 1, 1, (1, 1), (0, 0)))
            assert [one[d][0] for d in ("forward", "dx", "dweight")] == ["pointwise"] * 3
            assert plan_of(Conv(128, 32, 8, 8, 64, 1, 1, (1, 1), (0, 0)))["dx"][0] == "im2col"  # C < K
            strided = plan_of(Conv(16, 3, 64, 64, 16, 7, 7, (2, 2), (3, 3)))
            want = ["direct", "im2col", "direct"] if wide_tiles else ["im2col"] * 3
            assert [strided[d][0] for d in ("forward", "dx", "dweight")] == want
            # A strided dx by phases where they run direct: C = 8, 16, 32 (not C = 3 above, nor 64)
            for c, phased in ((16, wide_tiles), (32, wide_tiles), (64, False)):
                down = plan_of(Conv(8, c, 16, 16, 2 * c, 3, 3, (2, 2), (1, 1)))["dx"]
                assert down[0] == ("polyphase" if phased else "im2col"), down
                if phased:
                    assert "dx as 4 unit-stride convolutions of dy" in down[1]
            assert plan_of(Conv(8, 16, 16, 16, 32, 1, 1, (2, 2), (0, 0)))["dx"][0] == "im2col"  # 1x1
            first16 = plan_of(Conv(128, 3, 32, 32, 16, 3, 3, (1, 1), (1, 1)))
            assert first16["forward"][0] == ("direct" if isa != "generic" else "implicit_im2col")
            # Unit stride K = 32 with C >= 16 and a 3x3 or 1x1 kernel, and K > 32, are
            # Winograd's and the GEMM path's: direct there is forced only (APPLIES); so
            # is a 1x1 strided. Strided 3x3s up to K = 128 are direct's, and so are the
            # other kernels at K = 32 (a 5x5, a strided dx's 2x2 phase).
            for conv in (Conv(8, 16, 12, 12, 32, 5, 5, (1, 1), (2, 2)), Conv(8, 64, 8, 8, 32, 2, 2, (1, 1), (0, 0))):
                assert plan_of(conv)["forward"][0] == ("direct" if wide_tiles else "implicit_im2col")
            for conv in (Conv(8, 16, 12, 12, 32, 3, 3, (1, 1), (1, 1)), Conv(8, 3, 12, 12, 64, 3, 3, (1, 1), (1, 1)),
                         Conv(8, 32, 12, 12, 64, 1, 1, (2, 2), (0, 0)), Conv(8, 16, 12, 12, 32, 1, 1, (2, 2), (0, 0))):
                assert plan_of(conv)["forward"][0] != "direct"
                forced = plan_of(conv, "direct")
                if wide_tiles:
                    assert forced["forward"][0] == "direct"
                    assert "the GEMM path" in forced["forward"][1]
                else:
                    assert forced["forward"][0] == plan_of(conv)["forward"][0]
            for k in (48, 64, 128):
                down = plan_of(Conv(8, 32, 16, 16, k, 3, 3, (2, 2), (1, 1)))
                assert [down[d][0] for d in ("forward", "dweight")] == ["direct" if wide_tiles else "im2col"] * 2
            for k in (80 + 64, 256, 24):  # not a multiple of 16 up to 128: never direct
                assert "needs K = 8 or a multiple of 16" in plan_of(Conv(2, 3, 9, 9, k, 3, 3, (2, 2), (1, 1)),
                                                                    "direct")["forward"][1]
            # dx through col2im keeps dW off Winograd: a padding of 3 gives dx's
            # convolution a negative one, which Winograd does not take, C < K, and
            # C = 24 has no direct tiles
            padded = Conv(4, 24, 16, 16, 32, 3, 3, (1, 1), (3, 3))
            assert plan_of(padded)["forward"][0] == "winograd"
            assert plan_of(padded)["dx"][0] == "im2col"
            algorithm, why = plan_of(padded)["dweight"]
            assert algorithm == "im2col" and "winograd" not in why  # (AVX-512: "over direct", K = 32)
            assert why.startswith("dy times the column matrix (im2col), db with it")
            assert plan_of(padded, need_dx=False)["dweight"][0] == "winograd"
            assert plan_of(padded, need_dx=False)["dx"] is None
            assert "dx runs by col2im" in plan_of(padded, "winograd")["dweight"][1]
            no_wg = plan_of(Conv(128, 32, 16, 16, 64, 3, 3, (1, 1), (1, 1)), "no-winograd")
            assert "winograd" not in [no_wg[d][0] for d in ("forward", "dx", "dweight")]
    finally:
        _kernels.set_isa(previous)


def test_plan_conv2d_validates():
    with pytest.raises(ValueError, match="plan_conv2d: `mode` must be one of"):
        _kernels.plan_conv2d((1, 3, 8, 8), (4, 3, 3, 3), mode="fast")
    with pytest.raises(ValueError, match=r"plan_conv2d: `weight_shape` must be 4 non-negative ints \(K, C, kh, kw\)"):
        _kernels.plan_conv2d((1, 3, 8, 8), (4, 3, 3))
    with pytest.raises(ValueError, match="plan_conv2d: `weight_shape` must have 3 input channels to match"):
        _kernels.plan_conv2d((1, 3, 8, 8), (4, 2, 3, 3))
    with pytest.raises(TypeError, match="plan_conv2d: `need_dx` must be a bool"):
        _kernels.plan_conv2d((1, 3, 8, 8), (4, 3, 3, 3), need_dx="yes")


def test_conv_plan_of_a_model():
    """One row per Conv2d with the shape it sees at the given batch, and the
    planner's answer for it; no dx for a layer that skips it."""
    model = fc.Sequential(fc.Conv2d(3, 32, 3, padding=1), fc.ReLU(), fc.MaxPool2d(2),
                          fc.Conv2d(32, 64, 3, padding=1), fc.ReLU(), fc.MaxPool2d(2),
                          fc.Conv2d(64, 24, 1), fc.Flatten(), fc.Linear(24 * 8 * 8, 10))
    model[0].needs_input_grad = False
    model.train()
    rows = fc.conv_plan(model, (128, 3, 32, 32))
    assert [r["layer"] for r in rows] == ["0", "3", "6"]
    assert [r["x_shape"] for r in rows] == [(128, 3, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8)]
    assert rows[0]["dx"] is None and rows[1]["dx"] is not None
    for row, conv in zip(rows, (model[0], model[3], model[6])):
        plan = _kernels.plan_conv2d(row["x_shape"], conv.weight.shape, conv.stride, conv.padding,
                                    need_dx=conv.needs_input_grad)
        assert {d: row[d] for d in ("forward", "dx", "dweight")} == plan
    assert rows[1]["forward"][0] == "winograd" and rows[2]["forward"][0] == "pointwise"
    assert model.training and model[0].training  # the modes are restored
    assert "forward" not in vars(model[0])  # and the layers' own methods
    with pytest.raises(ValueError, match=r"conv_plan: `input_shape` must be 4 positive ints"):
        fc.conv_plan(model, (3, 32, 32))


def test_the_self_test_reaches_every_algorithm_on_every_isa():
    """fastconv info's self-test runs every kernel, and each conv kernel under
    each algorithm, on every ISA this CPU has, within its tolerance; direct
    only where the ISA has its tiles. Its cases are ones the forced algorithm
    applies to (so it runs, not auto's fallback)."""
    errors = self_test()
    for isa in _kernels.supported_isas():
        for kernel in _kernels.KERNELS:
            assert errors[f"{isa}/{kernel}"] < 1e-3
        for algorithm in _kernels.CONV_ALGORITHMS:
            grouped = algorithm == "depthwise"  # a grouped case, through the conv2d_ex kernels
            for kernel in (("conv2d_ex_forward", "conv2d_ex_backward") if grouped else
                           ("conv2d_forward", "conv2d_backward", "conv2d_maxpool_forward")):
                key = f"{isa}/{kernel}/{algorithm}"
                assert (key in errors) == (algorithm != "direct" or isa != "generic"), key
                assert errors.get(key, 0) < 1e-3, key
    assert set(CONV_CASES) == set(_kernels.CONV_ALGORITHMS)


def test_a_workspace_that_cannot_be_allocated_is_named():
    """With the address space capped below a strided convolution's column
    matrix (200 MB), the MemoryError names im2col's workspace and the output
    it was for."""
    code = textwrap.dedent("""
        import resource
        import numpy as np
        from fastconv import _guard, _kernels
        # the Python-side memory guard would refuse first; this test is about C's own message
        _guard.check_memory = lambda nbytes, what: None
        _kernels.set_num_threads(1)
        x = np.zeros((1, 64, 256, 256), np.float32)
        w = np.zeros((1, 64, 7, 7), np.float32)
        y = _kernels.conv2d_forward(x, w, None, 2, 3)  # warm: the GEMM's own buffers exist
        size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + 100 * 2**20, resource.RLIM_INFINITY))
        for name, call in (("forward", lambda: _kernels.conv2d_forward(x, w, None, 2, 3)),
                           ("backward", lambda: _kernels.conv2d_backward(x, w, y, 2, 3))):
            try:
                call()
                print(name, "ran")
            except MemoryError as e:
                print(name, e)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "forward conv2d_forward: could not allocate the im2col workspace (for the forward)" in r.stdout
    assert "backward conv2d_backward: could not allocate the im2col workspace (for dx and dW)" in r.stdout

