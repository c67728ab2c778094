"""Hand-written Triton kernel templates, installed as `tritonfunc.kernels`.

Generated kernels cover the elementwise, reduction and shape primitives; a template holds what codegen
does not derive from the graph: `contraction.py` is the tl.dot GEMM (k loop, grouped program order,
the sm_90 tile table) into which codegen writes each contraction's fused prologue and epilogue.
"""
