"""The fast simulation engine: the same device and server code as the Flower engine, with
many devices per Ray worker and one sum per worker per round.

Flower's simulation sends one message per device and round, and each costs tens of
milliseconds of messaging, (de)serialisation and process work, more than an ``mf``
device's training. Here a pool of Ray actors (:mod:`.pool`) each owns a shard of the
devices (:mod:`.shard`): their data, their state (:mod:`.store`) and their policy. A
round, run by the server's own :class:`~pollinate.server.federation.Server` loop
(:mod:`.server`), sends each shard the global parameters once; the shard runs the
ClientApp's device step on each of its sampled devices in turn, checks each reply with
the server's allow-list check on the decoded content, and returns one running sum of the
accepted updates (under user-level DP, of the clipped updates). Enrolment and evaluation
return one reply per shard too.

Chosen with ``pollinate simulate --engine fast``; ``--ray-address`` joins a Ray cluster.
Flower stays the default and the reference, since it is what a deployment runs. A fast
run resumes from its checkpoint (``--resume``) like a Flower run: each checkpoint also
writes the devices' private parameters, which live in the shards, to one file under
``device-state-dir`` (:mod:`.store`). The fast engine does not run the empirical audit,
which needs every device's own upload outside the shards.
"""

from pollinate.simulations.fast.engine import ENGINE, run_fast
from pollinate.simulations.fast.pool import FastEngineError

__all__ = ["ENGINE", "FastEngineError", "run_fast"]
