"""Op definitions shared by the layers (``minibnn.nn``) and the kernels (``minibnn.kernels``).

An op defined here is defined once, as readable array code against ``xp`` (NumPy or CuPy); the
functional layers wrap it in forward/backward pairs, the kernels' reference bodies call it, and
a compiled body (Numba, CUDA) that reimplements it is tested against it. Nothing here imports
``minibnn.nn``. Today: ``sign`` and the STE table (``ops/sign.py``).
"""
