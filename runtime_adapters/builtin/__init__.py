"""The built-in Python runtime: serves sklearn, xgboost, lightgbm and onnx models in this process.

``formats.py`` (type names, artifact files), ``models.py`` (one loader and predictor per library),
``tensors.py`` (KServe V2 tensors <-> numpy), ``adapter.py`` (the loaded models, a ``RuntimeAdapter``),
``inference.py`` (the V2 servicer on the SPI's port), ``__main__.py`` (the process), ``samples.py``
(sample models and their manifest for demos and tests).
"""
