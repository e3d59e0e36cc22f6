"""Privacy math: pure accounting functions and the append-only privacy ledger.

Nothing here trains a model or talks to Flower. An auditor can recompute every ε of a
run from its ``ledger.jsonl`` with :func:`pollinate.shared.privacy.ledger.recompute`.
"""
