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
SEEDS=0,1,2
COMMON=(logger=none train.log_every=1000 fisher.num_samples=5000)
declare -A SETTINGS=(
    [split_task]="task_sequence=split_fashion_mnist task_sequence.scenario=task"
    [split_class]="task_sequence=split_fashion_mnist task_sequence.scenario=class"
    [permuted_domain]="task_sequence=permuted_fashion_mnist task_sequence.scenario=domain task_sequence.num_tasks=5"
)
declare -A EXTRA=([si]="" [mas]="strategy.importance.num_samples=5000")  # MAS: as many as the Fisher
LAMBDAS=0.001,0.01,0.1,1,10,100,1000

multirun() {  # multirun DIR OVERRIDES...: skipped once done
    local dir=$1
    shift
    [[ -e $dir/.done ]] && { echo "== $dir: done before, kept"; return; }
    echo "== $dir: $*"
    uv run python run.py -m "$@" "${COMMON[@]}" "hydra.sweep.dir=$dir" >"$dir.log" 2>&1 ||
        { echo "failed, see $dir.log" >&2; exit 1; }
    touch "$dir/.done"
}

for name in "${@:-split_task split_class permuted_domain}"; do
  for name in $name; do
    read -r -a setting <<<"${SETTINGS[$name]}"
    for method in si mas; do
        dir=$OUT/$name
        mkdir -p "$dir"
        read -r -a extra <<<"${EXTRA[$method]}"
        multirun "$dir/sweep_$method" "${setting[@]}" "strategy=$method" "${extra[@]}" \
            "lambda=$LAMBDAS" seed=0 data.validation_size=10000
        best=$(uv run python scripts/results_table.py best-lambda "$dir/sweep_$method")
        multirun "$dir/$method" "${setting[@]}" "strategy=$method" "${extra[@]}" "lambda=$best" seed=$SEEDS
    done
  done
done
