#!/usr/bin/env bash
# bench/gpu_check.sh OUTDIR — every GPU parity test and GPU benchmark, on one H100, installing nothing
# from the network (extra wheels, if any, are carried in .whl/). Writes its tables and logs to OUTDIR.
set -uo pipefail
OUT=${1:-bench/out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
# the package without its C++ extension; kernels/ is mapped to alignslm.kernels by the editable install
ALIGNSLM_SKIP_CPP_BUILD=1 python3 -m pip install -q -e . --no-deps --no-build-isolation > "$OUT/install.log" 2>&1 \
  || echo "editable install failed (see install.log)"
python3 - <<'PY' 2>&1 | tee "$OUT/env.txt"
import torch, triton, transformers
print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)
print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
PY
# 1. kernel parity tests on the device
files=$(grep -l "pytest.mark.gpu" tests/*.py | tr '\n' ' ')
echo "gpu test files: $files"
timeout 120 python3 -m pytest -m gpu $files -q -p no:cacheprovider -o addopts="" 2>&1 | tee "$OUT/gpu_tests.txt"
# 2. benchmarks, each writes CSV rows into OUT
for f in bench/gpu/*.py; do
  echo "== $f"
  timeout 110 python3 "$f" "$OUT" 2>&1 | tee "$OUT/$(basename "$f" .py).txt"
done
echo "gpu_check done"
