"""Transform calls from several threads at once give the same results as torch.func: traces, builders
and launch records are per thread, and interpreted launches are serialised."""

import threading

import torch
import torch.func
import torch.nn.functional as F
from autodiff_helpers import assert_same, make

import tritonfunc


def loss(w, x, t):
    return F.cross_entropy((x @ w)[None], t[None])


def test_transforms_from_four_threads_agree_with_torch_func(interpreter):
    w = make(5, 3)
    xs = [make(6, 5, seed=s) for s in range(4)]
    ts = [torch.randint(0, 3, (6,), generator=torch.Generator().manual_seed(s)) for s in range(4)]
    wants = [
        (
            torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(w, x, t),
            torch.func.grad(lambda x: (x.sin() * x.exp()).sum())(x),
        )
        for x, t in zip(xs, ts)
    ]
    with tritonfunc.record_launches() as alone:
        tritonfunc.vmap(tritonfunc.grad(loss), in_dims=(None, 0, 0))(w, xs[0], ts[0])
        tritonfunc.grad(lambda x: (x.sin() * x.exp()).sum())(xs[0])
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        try:
            barrier.wait()
            out = []
            for _ in range(3):
                with tritonfunc.record_launches() as rec:
                    per_sample = tritonfunc.vmap(tritonfunc.grad(loss), in_dims=(None, 0, 0))(w, xs[i], ts[i])
                    g = tritonfunc.grad(lambda x: (x.sin() * x.exp()).sum())(xs[i])
                out.append((per_sample, g, rec.count))
            results[i] = out
        except BaseException as e:  # reported below, with the thread's traceback
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    for i, want in enumerate(wants):
        for per_sample, g, launches in results[i]:
            assert_same((per_sample, g), want)
            assert launches == alone.count  # each thread records its own launches only
