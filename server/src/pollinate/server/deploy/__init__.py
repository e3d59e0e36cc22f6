"""Deploying Pollinate: certificates, the SuperLink, registration and runs (Flower 1.41)."""
