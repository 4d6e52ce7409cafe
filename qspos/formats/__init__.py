"""Export formats: one module per format, each a writer and a checker, and the registry that names them.

``registry.FORMATS`` maps a format's name to its writer (net -> file in a directory) and its
checker (file -> a :class:`check.Check` against the PyTorch net); ``check`` holds what every
checker shares (the images, the logit comparison, the noise floor); ``metadata`` what every file
says about itself; ``qcdq_graph`` the graph-level steps of QCDQ files, which hold the deployment
net (:mod:`qspos.core.fold`); ``ort_run`` onnxruntime sessions, optimised graphs and latency. This
layer sits between ``runtime`` and ``stages``: it may import core, models and runtime, and the
export stage loops over its registry. (Not named ``export``: ``qspos.export`` is the API's export
function.)
"""
