"""tritonfunc: torch.func's transforms, run as generated Triton kernels.

The pipeline, one module per stage:
    trace -> transforms -> schedule -> codegen -> runtime
with the primitives (and all their rules) in primitives.py and the graph in graph.py.
"""

# functional_call and stack_module_state swap and stack module tensors; they compute no transform,
# so torch's own serve (a module's parameters then trace like any other tensors).
from torch.func import functional_call, stack_module_state

from .api import explain, grad, grad_and_value, hessian, jacfwd, jacrev, jit, jvp, linearize, vjp, vmap
from .cache import cache_info, clear_caches, set_cache
from .runtime import record_launches, set_backend

__all__ = [
    "vmap",
    "grad",
    "grad_and_value",
    "vjp",
    "jvp",
    "linearize",
    "jacrev",
    "jacfwd",
    "hessian",
    "functional_call",
    "stack_module_state",
    "jit",
    "explain",
    "record_launches",
    "set_backend",
    "cache_info",
    "clear_caches",
    "set_cache",
]
__version__ = "0.1.0"
