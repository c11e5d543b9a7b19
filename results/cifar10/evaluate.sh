#!/usr/bin/env bash
# Evaluate the CIFAR-10 reference study (second version): the seven models trained by train.sh,
# clean and all 19 corruptions x 5 severities with the CIFAR-10-C parameters, on the full
# 10 000-image test split; then the training curves. Rerunning resumes the run folder (finished
# cells are not recomputed).
#
#   results/cifar10/evaluate.sh DATA [SEED] [OUT]
#
# DATA: CIFAR-10 as a JPEG ImageFolder with test/ (train.sh's DATA). SEED: the training seed whose
# weights are evaluated (default 0); the corruption seed is always 0, so every seed's models see
# the same corrupted images. OUT: the run folder (default runs/cifar10-study-seed<SEED>).
# Environment: CHECKPOINT (default final.pt; last.pt evaluates unfinished trainings, for checks),
# LIMIT (a class-balanced subset of N test images, for the sweeps too), CORRUPTIONS (default all),
# TRAINING (the folder of the <model>-seed<SEED> training folders, default results/cifar10/training).
# Run from the repository root with `bivol-robust` on the PATH; prefix `torchrun
# --nproc_per_node N -m robustbench_bivol` in its place to spread the shards over N processes.
set -euo pipefail
# Keep freed memory in the process instead of returning it to the kernel after every batch: the
# same results with less CPU time (README, "CIFAR-10 reference maps").
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
data=$1 seed=${2:-0} out=${3:-runs/cifar10-study-seed${2:-0}}
checkpoint=${CHECKPOINT:-final.pt}
models=(resnet20 condconv_resnet20 dyconv_resnet20 involution_wide_resnet20 bivol_resnet20
        bivol_nosakg_resnet20 bivol_nostatic_wide_resnet20)
args=() logs=()
for model in "${models[@]}"; do
    folder=${TRAINING:-results/cifar10/training}/$model-seed$seed
    if [ ! -f "$folder/$checkpoint" ]; then
        echo "error: $folder/$checkpoint is missing: finish that training first (results/cifar10/train.sh)" >&2
        exit 1
    fi
    args+=(-m "$model=$folder/$checkpoint")
    logs+=("$folder")
done
bivol-robust evaluate "${args[@]}" --dataset "$data/test" --corruptions "${CORRUPTIONS:-all}" \
    --profile cifar --seed 0 ${LIMIT:+--limit "$LIMIT"} --out "$out"
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
