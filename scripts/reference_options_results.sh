#!/usr/bin/env bash
# The measured effect of the reference code's setup choices on Fashion-MNIST (docs/results.md),
# each against ewcexp's default, seeds 0, 1, 2, on the test set:
#   pad_to       permuted Fashion-MNIST, 5 tasks, MLP 2×400, Adam 1e-4, batch 128, 1000
#                iterations per task, exact Fisher on 1000 samples, λ=1000 (the setting a user
#                compared with the reference code): 28×28 vs padded 32×32, each with a fresh
#                Adam per task and with Adam's state carried on
#   reset        split Fashion-MNIST, task-incremental, the docs' settings, EWC λ=10000:
#                a fresh Adam per task vs Adam's state carried on
#   class_order  the same split setting: the natural class order vs one drawn per seed
#
#   bash scripts/reference_options_results.sh [OUT]   # OUT defaults to results/reference_options
#   uv run python scripts/results_table.py grouped OUT/pad_to strategy task_sequence.pad_to
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/reference_options}
source scripts/results_common.sh  # SETTINGS, COMMON, SEEDS, multirun
COMMON=(logger=none train.log_every=1000)  # each setting names its Fisher sample count
mkdir -p "$OUT"
read -r -a split <<<"${SETTINGS[split_task]}"

multirun "$OUT/pad_to" task_sequence=permuted_fashion_mnist task_sequence.num_tasks=5 \
    optimizer.lr=0.0001 train.iterations=1000 fisher.num_samples=1000 lambda=1000 \
    strategy=finetune,ewc,online_ewc task_sequence.pad_to=null,32 \
    optimizer.reset_per_task=true,false seed=$SEEDS
multirun "$OUT/reset" "${split[@]}" fisher.num_samples=5000 lambda=10000 \
    strategy=finetune,ewc optimizer.reset_per_task=true,false seed=$SEEDS
multirun "$OUT/class_order" "${split[@]}" fisher.num_samples=5000 lambda=10000 \
    strategy=finetune,ewc task_sequence.class_order=random seed=$SEEDS
