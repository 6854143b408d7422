"""Scale folding, in parts: node kinds, FP16 guards, choosing exponents, the pass, statistics.
The public face is :mod:`fp16guard.graph.fold_scales`."""
