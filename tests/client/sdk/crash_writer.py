"""A writer that the crash test kills with SIGKILL at random points.

Usage: python crash_writer.py STORE KEYHEX START. Prints "ready", then for i = START,
START+1, ...: records event item-i (and every 3rd i charges a ledger event and saves
private parameters of ~40 KB, so kills land in big and small transactions), and prints
i once the call has returned (that is, committed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pollinate.client.store import EncryptedStore
from pollinate.shared.privacy.ledger import local_event


def main() -> None:
    path, key, start = Path(sys.argv[1]), bytes.fromhex(sys.argv[2]), int(sys.argv[3])
    store = EncryptedStore.open(path, key)
    print("ready", flush=True)
    i = start
    while True:
        store.add_event(f"item-{i}", timestamp=float(i))
        if i % 3 == 0:
            store.charge(
                local_event(
                    round_=i, device="7", release=(1.0, 0.1, 10), clip_norm=1.0,
                    delta=1e-5, accountant="pld", epsilon=float(i),
                )
            )  # fmt: skip
            store.save(i, {"user_factors.weight": np.full((1, 10_000), i, np.float32)})
        print(i, flush=True)
        i += 1


if __name__ == "__main__":
    main()
