"""The native bridge's sources (the ``.pxi`` files that ``fastconv/_kernels.pyx``
includes, one per family) and its registry of kernels. The compiled module is
``fastconv._kernels``."""
