"""Trained models shipped inside PyPI packages, with realistic offline inputs, run through
``fp16guard run`` (``python -m benchmarks.real_models.run``)."""
