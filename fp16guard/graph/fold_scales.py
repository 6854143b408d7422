"""Graph pass: fold power-of-two scales into weights so large activations fit in FP16.

Why: many layers overflow FP16 only because of *scale*. Conv, MatMul, Gemm, ReLU, pooling,
Concat, Reshape... are positively homogeneous: divide a layer's weights and bias by ``2**e`` and
its output, and everything downstream, is divided by ``2**e`` until a node that is not
homogeneous, where one Mul by ``2**e`` restores the true values — or a scale-invariant
normalisation absorbs it. Powers of two are exact in FP16 and FP32 (barring range limits), so
the folded model computes the same function as the original.

**Exponents.** Every FLOAT activation ``t`` gets an integer exponent ``e(t)`` in
``[0, MAX_EXPONENT]``: the folded model stores ``t / 2**e(t)`` under the same name. Constants and
initializers are not activations; the ones that must follow a scale are rewritten. How a node
relates its exponents depends on its kind (:func:`classify`):

* ``pass`` — homogeneous in one data input (Relu, LeakyRelu, PRelu, MaxPool, AveragePool,
  GlobalAveragePool, Reshape, Transpose, Flatten, Identity, Dropout (inference), Squeeze,
  Unsqueeze, Slice, Gather, Split, Resize, Pad, Clip, Neg, Abs, ReduceMean/Max/Min/Sum/L1/L2,
  Mul or Div by a constant, Cast between float types...): ``e(out) = e(data)``. Scale-carrying
  parameters are rescaled (Pad's constant value, Clip's bounds).
* ``join`` — operands must share the scale (Add, Sub, Sum, Mean, Max, Min, Concat, Where):
  ``e(out) = e(operands)``; a constant operand (a bias) is divided by ``2**e(out)``.
* ``rescale`` — a linear op with constant weights (Conv, ConvTranspose, Gemm, MatMul with an
  initializer operand, BatchNormalization): its output exponent is free. Weights are multiplied
  by ``2**(e(in) - e(out))``, the bias divided by ``2**e(out)``. This is where scales are chosen.
* ``derived`` — products and powers of activations: Mul/Div of two activations, MatMul/Conv of
  two activations (exponents add), Pow by a constant, Sqrt (halves), Reciprocal, ReduceSumSquare.
* ``absorb`` — scale-invariant: LayerNormalization, InstanceNormalization, GroupNormalization
  (their ``epsilon`` is divided by ``4**e(in)``: exact, it is an FP32 attribute), LpNormalization,
  Sign, ArgMax/ArgMin, Shape, Size, NonZero: ``e(out) = 0``.
* ``other`` — everything else (Softmax, Sigmoid, Exp, Tanh, Erf, Cast to integer, subgraph
  holders, custom ops...): reads every float input at exponent 0. Graph outputs too.

Where a reader needs an exponent ``r`` other than the one its input carries, one converter
``Mul(t, 2**(e(t) - r))`` is inserted (shared by all readers needing the same ``r``): with
``r = 0`` it is the FP32 *restore* where a region ends; between two scaled regions it is an exact
FP16 rescale. A graph output ``y`` with ``e(y) > 0`` is produced as ``y__scaled`` and restored
under its own name, so the model's interface is unchanged.

**Choosing exponents** (:func:`solve_scales`): tensors linked by ``pass`` and ``join`` nodes form
a class (union-find) that shares one exponent, so Concats and most residual Adds need no
converters; the class exponent is the smallest that brings every member's calibrated ``max_abs``
to at most the plan threshold. Two refinements (docs/FOLDING.md): a join whose operands are
partly made by a weight or product (the branch) and partly by pass/join ops (the skip: a
residual stream) joins the branch's class only and reads the skip through a converter when
their exponents differ, so a stream growing block by block can step its scale up (joins and
skips still share one exponent wherever both guards allow it); and a layer whose weights cannot
take its whole step ``2**(e_in - e_out)`` gets its input's class raised (within its guard).
Biases that FP16 cannot hold next to their output (at most :data:`NEGLIGIBLE_BIAS` of the
output's mean |x|) are dropped (set to 0) and recorded.

Underflow guard: a class whose scaled values would sink below FP16's normal range keeps exponent
0 (and so the pinning rule): with a mean |x| in the statistics its scaled mean must stay
≥ 2**-4 (``MIN_SCALED_MEAN``; docs/FOLDING.md says why); else with a smallest non-zero |x|
column (one of :data:`SMALLEST_COLUMNS`) the scaled smallest value must stay ≥ 2**-14; else the
scaled ``max_abs`` must stay ≥ :data:`MIN_SCALED_MAX` (1.0), which keeps values down to
``max_abs * 2**-14`` normal. Rescaled weights, biases and constants must stay as
faithful in FP16 as the originals (relative L2 rounding error at most twice the original's, or
below FP16's unit round-off ``2**-11``), and at most ``2**-11`` of their magnitude may newly fall
below FP16's normal range (a subnormal weight has no room left for onnxruntime's FP16 weight
fusions: see :func:`faithful`); a tiny constant added to a much larger operand (an
``epsilon``, at most ``2**-10`` of the operand's max |x|) may lose precision, but never becomes 0.

The code lives in :mod:`fp16guard.graph.scales`, one idea per module: ``kinds`` (the kinds
above, what the statistics say of a tensor), ``guards`` (FP16 faithfulness of stored values),
``solve`` (choosing exponents), ``apply`` (the pass), ``stats`` (statistics of the folded
model); this module is their public face.

Contract of :func:`apply_scales` (the pass proper):

* **Requires** (checked, ModelError): weights loaded; unique node names; every exponent an
  integer in ``[0, MAX_EXPONENT]`` and naming a FLOAT activation of the main graph.
* **Ensures** (checked): the ONNX checker passes; graph inputs and outputs keep their names and
  types; every node's exponents obey its kind's relation above (converters make them); the model
  computes the same outputs as the input model, up to FP32 rounding of the rescaled constants.
* The input model is not modified.
"""

from __future__ import annotations

from fp16guard.graph.scales.apply import apply_scales
from fp16guard.graph.scales.guards import NEGLIGIBLE_BIAS, faithful
from fp16guard.graph.scales.kinds import MAX_EXPONENT, SMALLEST_COLUMNS, NodeKind, TensorRange, classify
from fp16guard.graph.scales.solve import MIN_SCALED_MAX, ScaleSolution, solve_scales
from fp16guard.graph.scales.stats import scaled_stats

__all__ = [
    "MAX_EXPONENT",
    "MIN_SCALED_MAX",
    "NEGLIGIBLE_BIAS",
    "SMALLEST_COLUMNS",
    "TensorRange",
    "NodeKind",
    "ScaleSolution",
    "classify",
    "faithful",
    "solve_scales",
    "apply_scales",
    "scaled_stats",
]
