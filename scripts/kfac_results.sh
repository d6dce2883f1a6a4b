#!/usr/bin/env bash
# Kronecker-factored EWC beside diagonal EWC and online EWC (docs/results.md): split
# Fashion-MNIST (task-incremental) and permuted Fashion-MNIST (domain-incremental), each
# method's λ chosen by a sweep at seed 0 on 10,000 held-out training images
# (data.validation_size: the test set is not looked at), then seeds 0, 1, 2 on the test set.
#
#   bash scripts/kfac_results.sh [OUT] [SETTING...]   # OUT defaults to results/kfac
#   uv run python scripts/results_table.py kfac OUT
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/kfac}
shift || true
source scripts/results_common.sh  # SETTINGS, COMMON, SEEDS, multirun, best_lambda
declare -A METHODS=(
    [ewc_diagonal]="strategy=ewc"
    [online_ewc_diagonal]="strategy=online_ewc"
    [ewc_kfac]="strategy=ewc fisher.structure=kfac"
    [online_ewc_kfac]="strategy=online_ewc fisher.structure=kfac"
)
LAMBDAS=1,10,100,1000,10000

names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(permuted_domain split_task)
for name in "${names[@]}"; do
    read -r -a setting <<<"${SETTINGS[$name]}"
    dir=$OUT/$name
    mkdir -p "$dir"
    for method in ewc_kfac online_ewc_kfac ewc_diagonal online_ewc_diagonal; do
        read -r -a options <<<"${METHODS[$method]}"
        multirun "$dir/sweep_$method" "${setting[@]}" "${options[@]}" \
            "lambda=$LAMBDAS" seed=0 data.validation_size=10000
        best=$(best_lambda "$dir/sweep_$method")
        multirun "$dir/$method" "${setting[@]}" "${options[@]}" "lambda=$best" seed=$SEEDS
    done
done
