#!/usr/bin/env bash
# Download, here, the wheels that the GPU check installs on a machine without a package registry (docs/gpu.md).
#
# The GPU machine's image has torch, torchvision, numpy, opencv, scikit-image, scipy, PyYAML, tqdm, Pillow and
# tensorboard, but not basicsr or lmdb (/work/.library/device/KINDS.md). basicsr 1.4.2 is an sdist on PyPI: its
# wheel is built here (pure Python; setup.py imports torch, hence --no-build-isolation). lmdb is a compiled
# wheel for the machine's CPython 3.12 on x86-64. basicsr's other requirements (addict, yapf, future,
# tb-nightly) are not imported by the code paths the check runs, and travel not.
#
# Usage: bash scripts/gpu_wheels.sh [DIR]      (DIR: .whl, which .gitignore ignores; the run call carries it)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl}
python=${PYTHON:-python3}
pinned() {  # the version that requirements.txt pins
    sed -n "s/^$1==\([^ ]*\).*/\1/p" requirements.txt
}
basicsr=$(pinned basicsr)
lmdb=$(pinned lmdb)
if [ -z "$basicsr" ] || [ -z "$lmdb" ]; then
    echo "error: requirements.txt pins no basicsr or lmdb version; pin them (basicsr==1.4.2, lmdb==X)." >&2
    exit 2
fi
mkdir -p "$dir"
rm -f "$dir"/basicsr-*.whl "$dir"/lmdb-*.whl  # one version of each: two stop the whole install there
"$python" -m pip wheel -q --no-deps --no-build-isolation -w "$dir" "basicsr==$basicsr"
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "lmdb==$lmdb"
ls -l "$dir"
echo "wheels in $dir: $(du -cb "$dir"/*.whl | tail -1 | cut -f1) bytes"
