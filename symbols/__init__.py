"""Backbone networks: one per file, each with get_symbol(**kwargs)."""
