"""Build-and-run targets behind the :class:`fp16guard.backends.base.Backend` protocol, chosen by
name through :mod:`fp16guard.backends.registry` (onnxruntime on CPU or GPU, TensorRT), plus the
latency profile (:mod:`fp16guard.backends.profile`). Importing this package loads no runtime."""
