#!/usr/bin/env bash
# What a session with a lent GPU runs (issue 7), as few device calls as possible, each well inside
# the device tool's 10-minute limit. Logs, CSVs and plots go to $OUT (the tool brings them back);
# commit the results under benchmarks/results/ with the device named.
#
#   bash benchmarks/gpu_session.sh test    # build csrc/ with CUDA, the whole suite on compiled Triton
#   bash benchmarks/gpu_session.sh bench   # the headline table, the bf16 sweep, the e2e BERT step
#   bash benchmarks/gpu_session.sh more    # the fp16/fp32 sweeps and torch.compile (max-autotune)
#
# The GPU machine has torch, triton, transformers, pytest(-xdist), tqdm and matplotlib but no
# network: the package is installed without dependencies, and csrc/ built for the local arch only.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
stage=${1:?usage: gpu_session.sh test|bench|more}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c 'import torch, triton, transformers, sys; print(sys.version.split()[0], torch.__version__, triton.__version__, transformers.__version__)'
} 2>&1 | tee "$OUT/env.txt"

install() {
  # One arch: a fat build of csrc/cuda takes minutes per arch. Budget: ~2 of the call's 10 minutes.
  arch=$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=16 timeout 150 python3 -m pip install -q --no-deps --no-build-isolation -e . \
    2>&1 | tail -20
  python3 -c 'from qa_kernels import native; print("native:", native.unavailable_reason(), "| cuda kernels:", native.has_device_kernels("cuda"))'
}

# Every step runs under its own timeout (SIGINT: pytest still writes its summary and junit.xml),
# all of them inside the device call's 600 s; the script fails if any step failed.
status=0
step() {
  "$@" || status=1
}

case $stage in
test)
  install 2>&1 | tee "$OUT/install.log"
  # xdist where present: ~1700 cases, each compiling its Triton specializations once.
  workers=$(python3 -c 'import xdist' 2>/dev/null && echo "-n 8")
  step env QA_KERNELS_REQUIRE_NATIVE=1 timeout -s INT 400 python3 -m pytest -q $workers -p no:cacheprovider \
    --junitxml="$OUT/junit.xml" >"$OUT/pytest.log" 2>&1
  tail -60 "$OUT/pytest.log"
  ;;
bench)
  install >/tmp/install.log 2>&1 || cat /tmp/install.log # $OUT holds at most 8 files
  tail -1 /tmp/install.log
  step timeout -s INT 150 python3 -m qa_kernels bench --no-progress --csv "$OUT/gpu-default.csv" --plot "$OUT/gpu-default.png" \
    >"$OUT/bench.log" 2>&1
  cat "$OUT/bench.log"
  step timeout -s INT 180 python3 benchmarks/sweep.py --dtypes bf16 --providers eager triton native --no-progress --out "$OUT" \
    --name sweep >/tmp/sweep.log 2>&1
  tail -5 /tmp/sweep.log
  step timeout -s INT 90 python3 benchmarks/e2e_bert.py --csv "$OUT/e2e.csv" >"$OUT/e2e.log" 2>&1
  cat "$OUT/e2e.log"
  ;;
more)
  install >/tmp/install.log 2>&1 || cat /tmp/install.log
  tail -1 /tmp/install.log
  step timeout -s INT 180 python3 benchmarks/sweep.py --dtypes fp16 fp32 --providers eager triton native --no-progress --out "$OUT" \
    --name sweep-more >/tmp/sweep.log 2>&1
  tail -5 /tmp/sweep.log
  step timeout -s INT 240 python3 benchmarks/sweep.py --dtypes bf16 fp16 --providers compile --no-progress \
    --shapes bert-base bert-large --out "$OUT" --name sweep-compile >/tmp/sweep.log 2>&1
  tail -30 /tmp/sweep.log
  ;;
*)
  echo "unknown stage $stage: test|bench|more" >&2
  exit 2
  ;;
esac
exit $status
