"""Destination adapters: one module per downstream API (see destinations/base.py)."""
