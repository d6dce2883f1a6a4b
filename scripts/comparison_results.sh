#!/usr/bin/env bash
# The comparison set of docs/results.md: fine-tuning, EWC, online EWC, SI, experience replay
# (M = 100, 500, 2000), A-GEM, LwF, EWC + ER and LwF + EWC on the three Fashion-MNIST settings
# of fashion_mnist_results.sh. Each λ (and LwF's weight α) is chosen by a sweep at seed 0 on
# 10,000 held-out training images (data.validation_size: the test set is not looked at), then
# seeds 0, 1, 2 run on the test set. LwF + EWC takes the λ chosen for EWC and the α chosen for
# LwF (not swept together). A-GEM and EWC + ER use a memory of 500.
#
#   bash scripts/comparison_results.sh [OUT] [SETTING...]   # OUT defaults to results/comparisons
#   uv run python scripts/results_table.py comparisons OUT
#
# ITERATIONS=N (default 500, the other tables' setting) sets the training steps per task.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/comparisons}
shift || true
source scripts/results_common.sh  # SETTINGS, COMMON, SEEDS, multirun, best_lambda
COMMON+=("train.iterations=${ITERATIONS:-500}")
LAMBDAS=100,1000,10000
SI_LAMBDAS=10,100,1000
ALPHAS=0.3,1,3
VALIDATION=(seed=0 data.validation_size=10000)
best_alpha() { uv run python scripts/results_table.py best strategy.alpha "$1"; }

names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(split_task split_class permuted_domain)
for name in "${names[@]}"; do
    read -r -a setting <<<"${SETTINGS[$name]}"
    dir=$OUT/$name
    mkdir -p "$dir"
    multirun "$dir/sweep_ewc" "${setting[@]}" strategy=ewc "lambda=$LAMBDAS" "${VALIDATION[@]}"
    multirun "$dir/sweep_online_ewc" "${setting[@]}" strategy=online_ewc "lambda=$LAMBDAS" "${VALIDATION[@]}"
    multirun "$dir/sweep_si" "${setting[@]}" strategy=si "lambda=$SI_LAMBDAS" "${VALIDATION[@]}"
    multirun "$dir/sweep_ewc_er" "${setting[@]}" strategy=ewc replay.size=500 "lambda=$LAMBDAS" "${VALIDATION[@]}"
    multirun "$dir/sweep_lwf" "${setting[@]}" strategy=lwf "strategy.alpha=$ALPHAS" "${VALIDATION[@]}"
    ewc=$(best_lambda "$dir/sweep_ewc")
    alpha=$(best_alpha "$dir/sweep_lwf")
    multirun "$dir/finetune" "${setting[@]}" strategy=finetune seed=$SEEDS
    multirun "$dir/er" "${setting[@]}" strategy=finetune replay.size=100,500,2000 seed=$SEEDS
    multirun "$dir/agem" "${setting[@]}" strategy=agem replay.size=500 seed=$SEEDS
    multirun "$dir/ewc" "${setting[@]}" strategy=ewc "lambda=$ewc" seed=$SEEDS
    multirun "$dir/online_ewc" "${setting[@]}" strategy=online_ewc \
        "lambda=$(best_lambda "$dir/sweep_online_ewc")" seed=$SEEDS
    multirun "$dir/si" "${setting[@]}" strategy=si "lambda=$(best_lambda "$dir/sweep_si")" seed=$SEEDS
    multirun "$dir/ewc_er" "${setting[@]}" strategy=ewc replay.size=500 \
        "lambda=$(best_lambda "$dir/sweep_ewc_er")" seed=$SEEDS
    multirun "$dir/lwf" "${setting[@]}" strategy=lwf "strategy.alpha=$alpha" seed=$SEEDS
    multirun "$dir/lwf_ewc" "${setting[@]}" strategy=lwf_ewc "lambda=$ewc" "strategy.alpha=$alpha" seed=$SEEDS
done
echo "done: uv run python scripts/results_table.py comparisons $OUT"
