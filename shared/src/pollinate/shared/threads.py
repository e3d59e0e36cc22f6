"""One core per simulated device: torch's and the BLAS library's thread pools.

A simulation runs one device per core (Ray workers, or the in-process runner). torch's
intra-op pool and numpy's BLAS pool (OpenBLAS in the numpy wheels) each start one thread
per core by default, so every process would try to use every core. The ranking refit
multiplies a (items × k) table in numpy; with two processes on two cores, BLAS threads
spinning against each other made a Beauty round take 384 s instead of about 35 s.
"""

from __future__ import annotations

import torch
from threadpoolctl import threadpool_limits


def use_one_thread() -> None:
    """Limit this process to one torch thread and one BLAS thread, for good."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    threadpool_limits(limits=1)
