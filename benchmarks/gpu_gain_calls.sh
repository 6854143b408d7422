#!/usr/bin/env bash
# Prepare `python -m benchmarks gpu_gain` for the lent GPU machine in 4 device calls instead of 5.
#
# onnxruntime-gpu 1.31.1's wheel (~255 MB) is repacked without its TensorRT provider (TensorRT is
# absent there anyway) as tar.xz (~204 MB), split into 50 MiB parts (a 56 MiB part plus the ~8 MB work tree passed the 64 MiB a call allows) under .big/ (git-ignored), and
# a lib_run result is packed into .gpu_bundle_d (FP32 models, plans, one holdout shard each, and
# the code that made the plans). Run from the repository root:
#
#     bash benchmarks/gpu_gain_calls.sh benchmarks/results/real_models_lib-DATE-LABEL.json REV [MODEL ...]
#
# then make the printed calls back to back (the machine goes back 30 s after a call). The fourth
# call carries the last part, .whl (pydantic for fp16guard; from ../shared/gpu/onnxruntime-gpu.sh)
# and the bundle, at most ~28 MB of bundle with a ~8 MB work tree (64 MiB a call).
set -euo pipefail
RESULT=$1; REV=$2; shift 2
MODELS=("$@")
[ -f .big/ort.name ] || bash ../shared/gpu/onnxruntime-gpu.sh
if ! ls .big/ortxz.part00 >/dev/null 2>&1; then
  tmp=$(mktemp -d); wheel="$tmp/$(cat .big/ort.name)"
  cat .big/ort.part* > "$wheel"
  mkdir "$tmp/x" && (cd "$tmp/x" && unzip -q "$wheel" && rm -f onnxruntime/capi/libonnxruntime_providers_tensorrt.so \
    && tar cf - . | xz -T2 -6 > "$tmp/ort.tar.xz")
  split -b 50m -d "$tmp/ort.tar.xz" .big/ortxz.part
  rm -rf "$tmp"
fi
grep -qx '/.gpu_bundle\*/' .git/info/exclude 2>/dev/null || echo '/.gpu_bundle*/' >> .git/info/exclude
rm -rf .gpu_bundle_d
.venv/bin/python -m benchmarks gpu_gain pack "$RESULT" --out .gpu_bundle_d --code "$REV" --max-mb 26 ${MODELS:+--models "${MODELS[@]}"}
n=$(ls .big/ortxz.part* | wc -l); last=$(printf '.big/ortxz.part%02d' $((n-1)))
cat <<MSG
Calls (kind nvidia-h200 takes an H100 or an H200), back to back:
$(for i in $(seq 0 $((n-2))); do p=$(printf '.big/ortxz.part%02d' "$i"); echo "  carry [\"$p\"]; command: mkdir -p \$HOME/ort && cp $p \$HOME/ort/"; done)
  carry ["$last", ".whl", ".gpu_bundle_d"]; command:
    cp $last \$HOME/ort/ && mkdir -p \$HOME/site && cat \$HOME/ort/ortxz.part* | xz -dc -T4 | tar xf - -C \$HOME/site &&
    python3 -m pip install -q --no-index --no-deps --no-compile --target \$HOME/site .whl/*.whl; export PYTHONPATH=\$HOME/site:\$PWD &&
    FP16GUARD_BENCH_COMMIT=$(git rev-parse --short HEAD) python3 -m benchmarks gpu_gain time .gpu_bundle_d --out \$OUT/gpu_gain.json --warmup 5 --rounds 3 --iters 10
  here: cp FILES_AT/gpu_gain.json benchmarks/results/gpu_gain-DATE-MACHINE.json &&
    .venv/bin/python -m benchmarks gpu_gain render benchmarks/results/gpu_gain-DATE-MACHINE.json --out benchmarks/results/gpu_gain-DATE-MACHINE.md
MSG
