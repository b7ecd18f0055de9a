"""CPU backend: CI and small jobs."""
