#!/usr/bin/env bash
# Regenerate results/cifar10/fourier: Fourier heat maps and band-limited noise sweeps of the seven
# models of the CIFAR-10 reference study with the bundled CIFAR-10 weights (--weights cifar10) on
# a class-balanced 500-image subset of the CIFAR-10 test split.
#
#   results/cifar10/fourier/run.sh DATA [RUN]
#
# DATA: the CIFAR-10 test split as a JPEG ImageFolder (e.g. ~/.cache/cifar10-jpg/test).
# RUN: the fourier run folder (default runs/fourier-cifar10; rerunning resumes it). Its per-sample
# predictions stay there; the reports are copied here. Run from the repository root with
# `bivol-robust` on the PATH. Prefix with `torchrun --nproc_per_node N -m robustbench_bivol` in
# place of `bivol-robust` to spread the frequencies' shards over N processes: same results.
set -euo pipefail
# Keep freed memory in the process instead of returning it to the kernel after every batch: the
# same results with 20 to 40% less CPU time (page faults; README, "CIFAR-10 reference maps").
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
data=$1 run=${2:-runs/fourier-cifar10}
here=results/cifar10/fourier
models=(-m resnet20 -m condconv_resnet20 -m dyconv_resnet20 -m involution_wide_resnet20 -m bivol_resnet20
        -m bivol_nosakg_resnet20 -m bivol_nostatic_wide_resnet20)
bivol-robust fourier "${models[@]}" --weights cifar10 --dataset "$data" --limit 500 \
    --shard-size 125 --batch-size 125 --out "$run"
cp "$run"/run.json "$run"/fourier.csv "$run"/fourier*.png "$run"/fourier*.svg "$here"/
bivol-robust sweep "${models[@]}" --weights cifar10 --dataset "$data" --limit 500 \
    --corruption band_noise --max 0.2 --steps 9 --batch-size 250 --out "$here/band_noise"
