"""The model-side core: archs, spaces, searchable layers (``layers/``), the supernet, costs,
budgets, latency tables, threshold calibration, the genome operators and loop of the search,
statistics, disjoint sets (union-find), and the deployment form of a quantized net (``fold``:
BatchNorm folded, int32 biases, conv outputs quantized), which export writes and fine-tuning may
train.

Nothing here reads a config or touches a file: every object is built from plain values, so a
user's own training loop can use it directly. Layer 1 of the package (above ``qspos.errors``).
"""
