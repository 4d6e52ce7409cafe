"""What running a stage needs: the config (recipe and loop settings), the run directory and its
atomic writes, checkpoints, data, the caller's task, torchrun, progress, metrics and number
formats, the optimiser, the training loop (its state, its step, what it watches, in-place
distillation), the float teacher, path evaluation, and building a config's supernet.

Layer 3: uses ``qspos.core`` and ``qspos.models``; knows nothing of the stages.
"""
