"""The native kernels, one name each, defined here once.

Each is ``fastconv._kernels.<name>`` (its wrapper in ``fastconv/_native/<family>.pxi``)
and ``fastconv.reference.<name>``, its NumPy twin of the same signature. The backend
dispatches by these names, ``fastconv info``'s self-test runs each, and
tests/test_kernel_contract.py fails for a name without its wrapper, its twin or its
self-test case.
"""

KERNELS = (
    "sgemm", "to_bfloat16",
    "conv2d_forward", "conv2d_backward", "conv2d_maxpool_forward",
    "conv2d_ex_forward", "conv2d_ex_backward",
    "maxpool2d_forward", "maxpool2d_backward",
    "relu_forward", "relu_backward", "bias_add",
    "leaky_relu_forward", "leaky_relu_backward", "elu_forward", "elu_backward",
    "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
    "batchnorm_forward", "batchnorm_backward",
    "avgpool2d_forward", "avgpool2d_backward",
    "locally_connected2d_forward", "locally_connected2d_backward",
    "adaptive_avgpool2d_forward", "adaptive_avgpool2d_backward",
    "adaptive_maxpool2d_forward", "adaptive_maxpool2d_backward", "add_relu",
)
