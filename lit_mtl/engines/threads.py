"""The T x T solvers run on numpy, whose BLAS (OpenBLAS) keeps its own thread pool. Called between
torch's operations, those threads compete for the cores with torch's (each pool spins for a while
after a call): measured on 2 cores at T = 40, Aligned-MTL's 40 x 40 eigendecomposition took 6.4 ms
and slowed the rest of the step by 40 ms; with numpy's BLAS on one thread, 0.5 ms and nothing.
The solvers therefore run with numpy's BLAS limited to one thread (threadpoolctl; about 10 us).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_CONTROLLER: list[Any] = []


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """numpy's BLAS on one thread inside the block (torch's own threads are not touched)."""
    if not _CONTROLLER:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER.append(ThreadpoolController())  # scans the loaded BLAS libraries once
    with _CONTROLLER[0].limit(limits=1, user_api="blas"):
        yield
