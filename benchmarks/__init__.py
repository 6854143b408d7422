"""fp16guard's benchmarks: one harness, ``python -m benchmarks NAME [args]``.

Every module directly in this folder is a benchmark (``SUMMARY`` and ``main(argv) -> int``);
shared timing, GPU set-up and result writing live in :mod:`benchmarks.harness`; the real-model
zoo lives in :mod:`benchmarks.real_models`. Results go to ``benchmarks/results/``.
"""
