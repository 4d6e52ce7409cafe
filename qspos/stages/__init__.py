"""The pipeline's stages: train, search, finetune, evaluate, export, report, and run (all of them).

Layer 4: each stage reads its config, works through ``qspos.runtime`` and writes into its run
directory. ``qspos.api`` and ``qspos.cli`` sit on top.
"""
