from fastconv import _kernels
