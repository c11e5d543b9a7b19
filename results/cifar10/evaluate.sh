#!/usr/bin/env bash
# Evaluate the CIFAR-10 reference study: the seven models trained by train.sh,
# clean and all 19 corruptions x 5 severities with the CIFAR-10-C parameters, on the full
# 10 000-image test split; then merge them into one study, draw the training curves and sweep the
# three noises.
#
#   results/cifar10/evaluate.sh DATA [SEED] [OUT]
#
# Each model is evaluated in its own run folder, OUT/runs/<model>, so a model is evaluated as soon
# as its training ends and two models can run side by side (one per core). Every run sees the same
# corrupted images: a corrupted image depends only on (corruption seed, sample index, corruption,
# severity). `bivol-robust compare` then merges the runs into OUT (tables, plots, report; per-sample
# results stay in the runs, so the paired and image-clustered intervals cover every pair of models),
# and again with DyConv and with Bi-volution as the baseline (OUT/vs-dyconv, OUT/vs-bivol).
# Rerunning resumes: finished cells are not recomputed.
#
# DATA: CIFAR-10 as a JPEG ImageFolder with test/ (train.sh's DATA). SEED: the training seed whose
# weights are evaluated (default 0); the corruption seed is always 0, so every seed's models see
# the same corrupted images. OUT: default runs/cifar10-study-seed<SEED>.
# Weights: seed 0's are the package's bundled `cifar10` weights (train.sh with BUNDLE=cifar10 copied
# them from the trainings' final.pt), so the study reruns without training; other seeds, or an
# explicit CHECKPOINT, read <TRAINING>/<model>-seed<SEED>/<CHECKPOINT>.
# Environment: MODELS (evaluate only these models' runs and stop; e.g. one per core as trainings
# finish), CHECKPOINT (final.pt, or last.pt to evaluate unfinished trainings, for checks),
# LIMIT (a class-balanced subset of N test images, for the sweeps too), CORRUPTIONS (default all),
# TRAINING (the folder of the <model>-seed<SEED> training folders, default results/cifar10/training).
# Run from the repository root with `bivol-robust` on the PATH.
set -euo pipefail
# Keep freed memory in the process instead of returning it to the kernel after every batch: the
# same results with less CPU time (README, "CIFAR-10 reference maps").
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
data=$1 seed=${2:-0} out=${3:-runs/cifar10-study-seed${2:-0}}

study=(resnet20 condconv_resnet20 dyconv_resnet20 involution_wide_resnet20 bivol_resnet20
       bivol_nosakg_resnet20 bivol_nostatic_wide_resnet20)
read -r -a models <<< "${MODELS:-${study[*]}}"

# Called as w=$(weights MODEL): an assignment, so set -e stops the script when it fails.
weights() {
    if [ "$seed" = 0 ] && [ -z "${CHECKPOINT:-}" ]; then
        echo cifar10
        return
    fi
    local file=${TRAINING:-results/cifar10/training}/$1-seed$seed/${CHECKPOINT:-final.pt}
    if [ ! -f "$file" ]; then
        echo "error: $file is missing: finish that training first (results/cifar10/train.sh)" >&2
        exit 1
    fi
    echo "$file"
}

for model in "${models[@]}"; do
    w=$(weights "$model")
    # Shards of 5 000 images: two files per cell to commit, a resumable piece of under a minute.
    bivol-robust evaluate -m "$model=$w" --dataset "$data/test" \
        --corruptions "${CORRUPTIONS:-all}" --profile cifar --seed 0 --shard-size 5000 \
        ${LIMIT:+--limit "$LIMIT"} --out "$out/runs/$model"
done
[ -n "${MODELS:-}" ] && exit 0

args=() runs=() logs=()
for model in "${study[@]}"; do
    w=$(weights "$model")
    args+=(-m "$model=$w")
    runs+=("$out/runs/$model")
    logs+=("${TRAINING:-results/cifar10/training}/$model-seed$seed")
done
bivol-robust compare "${runs[@]}" --baseline resnet20 --out "$out"
# The paper claims Bi-volution resists noise better than dynamic convolution: the same tables with
# every difference (and its image-clustered interval) taken against DyConv.
bivol-robust compare "${runs[@]}" --baseline dyconv_resnet20 --out "$out/vs-dyconv"
# The paper's ablations, each against the full Bi-volution.
bivol-robust compare "${runs[@]}" --baseline bivol_resnet20 --out "$out/vs-bivol"
bivol-robust curves "${logs[@]}" --out "$out/training_curves.png"
# The paper's form of the noise claim: accuracy against noise strength, one line per model, each
# noise from clean to about twice its CIFAR-10-C severity-5 strength (11 points, the same noise
# pattern at every strength), on a class-balanced 2 000 test images.
sweep() {
    bivol-robust sweep "${args[@]}" --dataset "$data/test" --limit "${LIMIT:-2000}" --corruption "$1" \
        --min "$2" --max "$3" --steps 11 --seed 0 --out "$out/sweep-$1"
}
sweep gaussian_noise 0 0.2   # sigma; severities 0.04 ... 0.10
sweep impulse_noise 0 0.14   # flip probability; severities 0.01 ... 0.07
sweep shot_noise 25 525      # photons at full intensity, fewer is noisier; severities 500 ... 50
