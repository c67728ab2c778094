"""Hand-written Triton kernels, installed as `tritonfunc.kernels`.

Generated kernels cover the elementwise, reduction and shape primitives; templates that codegen
cannot derive (contractions on `tl.dot`, arriving with a later issue) will live here.
"""
