#!/usr/bin/env bash
# Every GPU figure the open issues ask for, in one command on a lent GPU machine (the device tool
# lends an H200 for about 15 minutes a session, start-up included; this takes about 10).
#
# Prepare here, once (the GPU image lacks only imagecorruptions-imaug; the wheel travels in .whl/):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl "imagecorruptions-imaug>=1.1.5"
# Run there (device tool: carry [".whl"], timeout_s 600):
#   bash benchmarks/gpu_session.sh
# Smoke test of the script itself on a CPU (tiny sizes, writes to $OUT or /tmp/gpu-session):
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_session.sh
#
# Writes under $OUT (what the device tool brings back: at most 8 files): session.log (every step's
# output), tests.xml (JUnit), and the Markdown tables RESULTS-device.md, RESULTS-corruptions-cuda.md,
# RESULTS-pipeline.md, RESULTS-ops-cuda.md, to copy over benchmarks/ after reading them.
# Each step has its own time limit, so one that hangs costs its limit, not the session.
set -u
device=${DEVICE:-cuda}
quick=${QUICK:-}
out=${OUT:-/tmp/gpu-session}
mkdir -p "$out"
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, report the exit status
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    echo "== $name: $*" | tee -a "$out/session.log"
    timeout "$limit" "$@" >>"$out/session.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - started)) s" | tee -a "$out/session.log"
}

step machine 30 sh -c 'nvidia-smi 2>/dev/null | head -15; python3 -c "import torch, torchvision, triton; print(torch.__version__, torchvision.__version__, triton.__version__, torch.cuda.is_available())"'
step tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_philox.py tests/test_triton_involution.py \
    tests/test_fused_involution.py tests/test_pipeline.py --junitxml="$out/tests.xml"
if [ -n "$quick" ]; then
    step agreement 120 python3 benchmarks/device_agreement.py --device "$device" --quick --out "$out/RESULTS-device.md"
    step corruption-speed 120 python3 benchmarks/corruption_speed.py --device "$device" --quick --sizes 32 \
        --out "$out/RESULTS-corruptions-cuda.md"
    step pipeline 120 python3 benchmarks/pipeline.py --device "$device" --images 8 --batch-size 4 \
        --out "$out/RESULTS-pipeline.md"
    step ops 120 python3 benchmarks/ops.py --device "$device" --quick --out "$out/RESULTS-ops-cuda.md"
else
    step agreement 150 python3 benchmarks/device_agreement.py --device "$device" --out "$out/RESULTS-device.md"
    step corruption-speed 150 python3 benchmarks/corruption_speed.py --device "$device" --sizes 224,64,32 \
        --out "$out/RESULTS-corruptions-cuda.md"
    step pipeline 120 python3 benchmarks/pipeline.py --device "$device" --images 4096 --batch-size 256 --amp \
        --channels-last --workers 4 --threads 0 --out "$out/RESULTS-pipeline.md"
    step ops 150 python3 benchmarks/ops.py --device "$device" --out "$out/RESULTS-ops-cuda.md"
fi
ls -la "$out"
