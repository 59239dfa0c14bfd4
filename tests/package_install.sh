#!/usr/bin/env bash
# The Python package installed as a user installs it, then used outside the repository: a fresh
# virtual environment gets the project's torch and setuptools pins (scripts/setup.sh), `pip install
# --no-build-isolation` builds libmhc.so against that torch into it, and Python started in an empty
# folder imports mhc from site-packages and runs the ops forward and backward. First, with no torch
# in the environment, the install must fail in one line that says what is missing.
# Usage: package_install.sh SOURCE_DIR   (JOBS: the package build's job count, 2 by default)
set -euo pipefail
root=$(cd "$1" && pwd)
unset MHC_LIBRARY  # it would point the installed package at another library
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The sources the package builds from, copied: the build writes its tree beside setup.py, which must
# not happen in the checkout, and the copy shows that the package needs nothing else of the
# repository (neither build/ nor .venv/).
mkdir "$work/src"
tar -C "$root" --exclude=build --exclude='*.egg-info' --exclude=__pycache__ -cf - \
  CMakeLists.txt cmake include src python | tar -C "$work/src" -xf -

venv=$work/venv
/usr/bin/python3 -m venv "$venv"
# This fleet's pip configuration names index folders that may be absent: pip's warnings of them are noise.
pip() { "$venv/bin/python" -m pip -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored" >&2); }
pip install setuptools==84.2.1

if out=$(pip install --no-build-isolation "$work/src/python" 2>&1); then
  echo "FAIL: the package installed into an environment without torch"; exit 1
fi
expected="torch-mhc: $venv/bin/python cannot import torch (No module named 'torch'); the library is built against"
grep -qF "$expected" <<< "$out" || { printf 'FAIL: no one-line refusal without torch:\n%s\n' "$out"; exit 1; }

pip install torch==2.13.0
start=$SECONDS
CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-2} pip install --no-build-isolation "$work/src/python"
echo "package_install: torch-mhc built and installed in $((SECONDS - start)) s"
"$venv/bin/python" -m pip check --disable-pip-version-check  # its torch pin is met

mkdir "$work/elsewhere"
cd "$work/elsewhere"
# torch alone, as the package requires: its warning that NumPy is absent is noise here.
"$venv/bin/python" -W "ignore:Failed to initialize NumPy" - <<'EOF'
import os
import sysconfig

import torch

import mhc

site = os.path.realpath(sysconfig.get_paths()["platlib"])
for path in (mhc.__file__, mhc.library_path):
    assert os.path.realpath(path).startswith(site + os.sep), f"{path} is not under {site}"

torch.manual_seed(0)
n, C = 4, 8
hc = mhc.HyperConnection("mhc", streams=n, dim=C, sublayer_index=0).double()
x = torch.randn(5, n, C, dtype=torch.float64, requires_grad=True)
h, H_pre, H_post, H_res = torch.ops.mhc.pre(x, hc.phi, hc.bias, hc.alpha, "mhc")
assert torch.allclose(h, torch.einsum("tn,tnc->tc", H_pre, x))  # h = H_pre x
ones = torch.ones(5, n, dtype=torch.float64)
assert torch.allclose(H_res.sum(-1), ones) and torch.allclose(H_res.sum(-2), ones)  # Sinkhorn-Knopp
assert torch.autograd.gradcheck(lambda *args: torch.ops.mhc.pre(*args, "mhc"), (x, hc.phi, hc.bias, hc.alpha))

sublayer = torch.nn.Linear(C, C).double()
hc(x, sublayer).square().mean().backward()
for name, grad in (("x", x.grad), ("phi", hc.phi.grad), ("sublayer weight", sublayer.weight.grad)):
    assert grad is not None and grad.isfinite().all() and grad.abs().sum() > 0, f"bad gradient of {name}"
print(f"package_install: mhc from {mhc.library_path} (torch {torch.__version__}): ops and HyperConnection ok")
EOF
