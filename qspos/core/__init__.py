"""The model-side core: archs, spaces, searchable layers, the supernet, costs, budgets, latency
tables, threshold calibration and the genome operators of the search.

Nothing here reads a config or touches a file: every object is built from plain values, so a
user's own training loop can use it directly. Layer 1 of the package (above ``qspos.errors``).
"""
