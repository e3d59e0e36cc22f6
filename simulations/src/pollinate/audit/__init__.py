"""Privacy audits of a Pollinate run: check the claims, try to break them, sign the result.

An audit is meant for someone who must sign off a deployment, or an outside auditor who
trusts nothing but recomputation. This package holds the pieces that need neither torch
nor Flower:

- :mod:`pollinate.audit.signing`: Ed25519 key pairs, and an in-toto Statement v1 in a DSSE
  envelope that binds the audit report, the released model and the ledger by SHA-256, so
  that anyone with the public key can check that none of them changed after signing.
- :mod:`pollinate.audit.one_run`: the empirical ε lower bound of Steinke, Nasr and
  Jagielski (NeurIPS 2023, "Privacy auditing with one (1) training run") from canaries
  inserted into a single training run.

The report builder (``pollinate audit RUN_DIR``) is not built yet.
"""

from pollinate.audit.errors import AuditError

__all__ = ["AuditError"]
