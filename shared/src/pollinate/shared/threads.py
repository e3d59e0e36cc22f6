"""One core per simulated device: torch's and the BLAS library's thread pools.

A simulation runs one device per core (Ray workers, or the in-process runner). torch's
intra-op pool and numpy's BLAS pool (OpenBLAS in the numpy wheels) each start one thread
per core by default, so every process would try to use every core. The ranking refit
multiplies a (items × k) table in numpy; with two processes on two cores, BLAS threads
spinning against each other made a Beauty round take 384 s; with one thread each, 5–6 s.
"""

from __future__ import annotations

from functools import cache

import torch
from threadpoolctl import threadpool_limits


@cache
def use_one_thread() -> None:
    """Limit this process to one torch thread and one BLAS thread, for good.

    Only the first call does anything: a simulated device calls it for every message,
    and finding the BLAS libraries costs about 0.6 ms, which is several percent of an
    ``mf`` device round.
    """
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    threadpool_limits(limits=1)
