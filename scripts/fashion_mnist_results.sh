#!/usr/bin/env bash
# The measured table of docs/results.md: every strategy on split and permuted Fashion-MNIST
# (the full dataset; on Debian: apt-get install dataset-fashion-mnist; permuted: 5 tasks, to fit
# a 2-core machine's afternoon), three seeds, with λ
# chosen per setting by a small sweep at seed 0, plus the Fisher estimators compared.
#
#   bash scripts/fashion_mnist_results.sh [OUT]      # OUT defaults to results/fashion_mnist
#   uv run python scripts/results_table.py table OUT > docs/results.md
#
# Each `-m` line is one Hydra multirun (jobs run one after another in one process); add
# hydra/launcher=slurm to any of them to spread the jobs over a cluster instead.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/fashion_mnist}
source scripts/results_common.sh  # SETTINGS, COMMON, SEEDS, multirun, best_lambda

mkdir -p "$OUT"
for name in split_task split_class permuted_domain; do
    read -r -a setting <<<"${SETTINGS[$name]}"
    dir=$OUT/$name
    mkdir -p "$dir"
    multirun "$dir/sweep_ewc" "${setting[@]}" strategy=ewc lambda=1,10,100,1000,10000 seed=0
    multirun "$dir/sweep_l2" "${setting[@]}" strategy=l2 lambda=0.1,1,10 seed=0
    ewc_lambda=$(best_lambda "$dir/sweep_ewc")
    l2_lambda=$(best_lambda "$dir/sweep_l2")
    multirun "$dir/baselines" "${setting[@]}" strategy=finetune,joint seed=$SEEDS
    multirun "$dir/ewc" "${setting[@]}" strategy=ewc,ewc_sum,online_ewc "lambda=$ewc_lambda" seed=$SEEDS
    multirun "$dir/l2" "${setting[@]}" strategy=l2 "lambda=$l2_lambda" seed=$SEEDS
done

# the Fisher estimators (seeds 0 and 1), at the λ chosen for exact; `batched` also at λ·256,
# since its estimate shrinks roughly with the minibatch size (fisher.batch_size=256)
read -r -a setting <<<"${SETTINGS[permuted_domain]}"
ewc_lambda=$(best_lambda "$OUT/permuted_domain/sweep_ewc")
batched_lambda=$(python3 -c "print($ewc_lambda * 256)")
multirun "$OUT/estimators" "${setting[@]}" strategy=ewc "lambda=$ewc_lambda" \
    fisher.estimator=sample,empirical,batched seed=0,1
multirun "$OUT/estimators_batched" "${setting[@]}" strategy=ewc "lambda=$batched_lambda" \
    fisher.estimator=batched seed=0,1
echo "done: uv run python scripts/results_table.py table $OUT > docs/results.md"
