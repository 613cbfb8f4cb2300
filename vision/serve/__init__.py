"""Serving exported models: REST app, micro-batching, A/B routing, prediction log, drift."""
