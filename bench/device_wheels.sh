#!/usr/bin/env bash
# Prepares the checkout for bench/device_check.sh on the GPU machine (Python 3.12 image with jax + CUDA, flax,
# optax, orbax, chex, torch, transformers, pytest...; no network): downloads into .whl/ the Python 3.12 wheels of
# our requirements that image lacks, copies the corpus mirror into .device_data/ (the machine has no ../shared),
# keeps both out of git (.git/info/exclude), and prints the `carry` list and the command to give the device tool.
#
#     bash bench/device_wheels.sh            # run from anywhere; needs pip and the package index
set -euo pipefail
cd "$(dirname "$0")/.."

# Our requirements.txt pins missing from the image (see /work/.library/device/KINDS.md), with what they need that
# the image lacks too: grain (array-record, portpicker), the HTTP API (starlette, uvicorn), tensorboardX, and the
# official openai client the API tests drive (httpx2, httpcore2, truststore, jiter, pydantic, sniffio...).
WHEELS=(
  grain==0.2.18 array-record==0.8.6 portpicker==1.6.0
  starlette==1.10.0 uvicorn==0.54.0 tensorboardX==2.6.5
  openai==3.54.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 jiter==0.19.0 sniffio==1.3.1
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
)
MIRROR="${MULM_DATA_MIRROR:-../shared/data}"

exclude=.git/info/exclude
[ -f .git ] && exclude="$(git rev-parse --git-path info/exclude)"  # a worktree's .git is a file
for path in /.whl/ /.device_data/; do
  grep -qxF "$path" "$exclude" 2>/dev/null || echo "$path" >> "$exclude"
done

rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

rm -rf .device_data && mkdir -p .device_data
cp "$MIRROR"/*.txt "$MIRROR"/*.model .device_data/

echo "wheels: $(ls .whl | wc -l) files, $(du -sh .whl | cut -f1); data: $(du -sh .device_data | cut -f1)"
echo "carry: [\".whl\", \".device_data\"]"
echo "command: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; bash bench/device_check.sh"
echo "timeout_s: 600 (the check bounds itself to about 8 minutes; its files come back from \$OUT)"
