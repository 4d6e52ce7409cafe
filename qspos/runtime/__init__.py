"""What running a stage needs: the config, the run directory and its atomic writes, checkpoints,
data, torchrun, progress and metrics logging, the optimiser, the training loop, path evaluation,
and building a config's supernet.

Layer 3: uses ``qspos.core`` and ``qspos.models``; knows nothing of the stages.
"""
