"""Helpers every benchmark shares: which benchmarks exist (:mod:`.registry`), timing
(:mod:`.timing`), onnxruntime/torch GPU set-up (:mod:`.gpu`), result files with their context
(:mod:`.results`), fp16guard code at a git revision (:mod:`.code`).

Importing this package imports the standard library only, so ``python -m benchmarks`` lists the
benchmarks on a machine that has neither onnxruntime nor numpy.
"""
