#!/usr/bin/env bash
# A user's install, checked end to end (CI runs it after the tests): a fresh venv, the CPU build of
# torch, then `pip install` of a copy of this checkout's tracked files with pip's defaults (build
# isolation, no -e).
#   1. With a working compiler: the wheel carries the CPU kernels; the first call runs them, with no
#      warning and no just-in-time build, and matches the reference (loss and gradients).
#   2. With CXX=/bin/false: the install still succeeds, its log says the build failed, the first call
#      warns (naming the failed install-time build) and gives the same numbers (torch implementation).
# Takes a few minutes (one compile of csrc/). Usage: tools/check_wheel.sh [python3]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export QA_KERNELS_CACHE="$work/cache"  # no just-in-time build of an earlier run is reused

mkdir "$work/src"
(cd "$repo" && git ls-files -z | xargs -0 cp --parents -t "$work/src")  # no build/, no _C of the checkout
"$python" -m venv "$work/venv"
pip="$work/venv/bin/python -m pip"
$pip install --quiet --upgrade pip
"$work/venv/bin/python" "$repo/tools/install_torch.py" --constraints "$repo/constraints.txt" torch numpy

smoke() {  # $1: native | fallback
  (cd "$work" && "$work/venv/bin/python" - "$1") <<'PY'
import sys, warnings
import torch
import qa_kernels
from qa_kernels import native, reference

expect = sys.argv[1]
assert "/venv/" in qa_kernels.__file__, f"not the installed package: {qa_kernels.__file__}"
torch.manual_seed(0)
hidden = torch.randn(4, 64, 32, requires_grad=True)
weight = torch.randn(2, 32, requires_grad=True)
bias = torch.randn(2, requires_grad=True)
start, end = torch.tensor([3, 70, -1, 10]), torch.tensor([5, 2, 64, 63])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = qa_kernels.qa_head(hidden, weight, bias, start, end)
    grads = torch.autograd.grad(out.loss, (hidden, weight, bias))
ref = reference.qa_head(hidden, weight, bias, start, end)
ref_grads = torch.autograd.grad(ref.loss, (hidden, weight, bias))
torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-5)
for g, r in zip(grads, ref_grads):
    torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
if expect == "native":
    assert native.available() and native.has_device_kernels("cpu"), native.unavailable_reason()
    assert "/venv/" in native._loaded_from and "_C" in native._loaded_from, native._loaded_from
    assert not messages, messages
else:
    assert not native.available()
    assert any("install-time build failed" in m for m in messages), messages
print(f"smoke ({expect}): loss {out.loss.item():.6f} matches the reference; warnings: {messages or 'none'}")
PY
  "$work/venv/bin/qa-kernels" doctor
}

echo "== 1. pip install (default flags) with a working compiler"
$pip install --quiet "$work/src"
record=$(echo "$work"/venv/lib/python*/site-packages/qa_kernels/_build.json)
grep -q '"native": "built"' "$record" || { cat "$record"; exit 1; }
ls "$work"/venv/lib/python*/site-packages/qa_kernels/_C*.so "$work"/venv/lib/python*/site-packages/qa_kernels/csrc/schemas.cpp
smoke native

echo "== 2. the same with CXX=/bin/false"
CXX=/bin/false $pip install -v --force-reinstall --no-deps "$work/src" > "$work/install.log" 2>&1
grep "WARNING: qa_kernels:" "$work/install.log"
grep -q '"native": "failed"' "$record" || { cat "$record"; exit 1; }
if ls "$work"/venv/lib/python*/site-packages/qa_kernels/_C*.so 2>/dev/null; then
  echo "check_wheel: the failed build installed a library (an earlier build's?)"; exit 1
fi
CXX=/bin/false smoke fallback
echo "check_wheel: both installs behave as documented"
