"""Trained models shipped inside PyPI packages, with realistic offline inputs: the data and the
per-model runs behind ``python -m benchmarks real_models_run`` (through ``fp16guard run``) and
``python -m benchmarks real_models_lib`` (the library path), shared by ``stability``,
``autocast_compare``, ``gpu_gain`` and ``repair_parallel``."""
