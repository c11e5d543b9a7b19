#!/usr/bin/env bash
# Train models of the CIFAR-10 reference study with its one recipe (REPRODUCE.md, section 1).
# Rerunning resumes each training from its last.pt; a finished one is not retrained.
#
#   results/cifar10/train.sh DATA SEED MODEL [MODEL ...]
#
# DATA: CIFAR-10 as a JPEG ImageFolder with train/ (all 50 000 images) and test/.
# BUNDLE=TAG (environment, maintainers): also copy each final checkpoint into the package as
# bundled weights TAG (the study ships seed 0 as `cifar10`); rerunning a finished training only
# rewrites its final.pt from last.pt and bundles it.
# Run from the repository root with `bivol-robust` on the PATH (e.g. `. .venv/bin/activate`).
set -euo pipefail
data=$1 seed=$2
shift 2
for model in "$@"; do
    operator_specific=()
    case $model in
        # involution without a static branch needs its kernel generators' input-dependent part at
        # 0.01x the learning rate (README, "Bundled weights"); Bi-volution's gated branch does not.
        involution_*|bivol_nostatic_*) operator_specific=(--generator-lr-scale 0.01) ;;
    esac
    # DyConv's temperature annealing (30 -> 1 over 10 epochs, the paper's) is train's default.
    bivol-robust train --model "$model" --dataset "$data" --seed "$seed" \
        --epochs 50 --batch-size 128 --lr 0.1 --weight-decay 5e-4 --schedule cosine --warmup-epochs 1 \
        --label-smoothing 0 --amp "${operator_specific[@]}" ${BUNDLE:+--bundle-as "$BUNDLE"} --out "results/cifar10/training/$model-seed$seed"
done
