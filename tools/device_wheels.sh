#!/usr/bin/env bash
# The wheels a device machine lacks (it has jax 0.11.2, flax, optax, orbax and Python 3.12, but
# not grain, ml_collections, tensorboardX, array-record or portpicker), fetched here into .whl/
# (git-ignored through .git/info/exclude) for `run`'s carry. Pins: requirements.txt's.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
pin() { grep -i "^$1==" requirements.txt | head -1 || true; }
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "$(pin grain)" "$(pin ml-collections)" "$(pin tensorboardX)" array-record portpicker
ls -l .whl
