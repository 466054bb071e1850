"""Adapters: the edge where CML Fleet meets AWS (and, for tests, in-memory fakes)."""
