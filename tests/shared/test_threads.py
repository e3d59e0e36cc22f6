"""A simulated device uses one torch thread and one BLAS thread (checked in a fresh
interpreter, since both limits are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

CHECK = """
import json, torch
from threadpoolctl import threadpool_info
from pollinate.shared.threads import use_one_thread
import numpy  # noqa: F401  (loads numpy's BLAS)
use_one_thread()
print(json.dumps({"torch": torch.get_num_threads(),
                  "blas": [p["num_threads"] for p in threadpool_info()
                           if p["user_api"] == "blas"]}))
"""


def test_use_one_thread_limits_torch_and_numpy_blas() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "", "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"},
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["torch"] == 1
    assert seen["blas"] and all(n == 1 for n in seen["blas"])
