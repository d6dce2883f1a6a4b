#!/usr/bin/env bash
# SI and MAS beside the EWC rows of docs/results.md: the same three Fashion-MNIST settings as
# fashion_mnist_results.sh, λ chosen by a sweep at seed 0 on 10,000 held-out training images
# (data.validation_size: the test set is not looked at), then seeds 0, 1, 2 on the test set.
#
#   bash scripts/relatives_results.sh [OUT] [SETTING...]   # OUT defaults to results/fashion_mnist
#   uv run python scripts/results_table.py table OUT > docs/results.md
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/fashion_mnist}
shift || true
source scripts/results_common.sh  # SETTINGS, COMMON, SEEDS, multirun, best_lambda
declare -A EXTRA=([si]="" [mas]="strategy.importance.num_samples=5000")  # MAS: as many as the Fisher
LAMBDAS=0.001,0.01,0.1,1,10,100,1000

names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(split_task split_class permuted_domain)
for name in "${names[@]}"; do
    read -r -a setting <<<"${SETTINGS[$name]}"
    dir=$OUT/$name
    mkdir -p "$dir"
    for method in si mas; do
        read -r -a extra <<<"${EXTRA[$method]}"
        multirun "$dir/sweep_$method" "${setting[@]}" "strategy=$method" "${extra[@]}" \
            "lambda=$LAMBDAS" seed=0 data.validation_size=10000
        best=$(best_lambda "$dir/sweep_$method")
        multirun "$dir/$method" "${setting[@]}" "strategy=$method" "${extra[@]}" "lambda=$best" seed=$SEEDS
    done
done
