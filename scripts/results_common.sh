# Shared by the result scripts (sourced, not run): the Fashion-MNIST settings of
# docs/results.md, the overrides every run shares, and one Hydra multirun per folder.
SEEDS=0,1,2
COMMON=(logger=none train.log_every=1000 fisher.num_samples=5000)

declare -A SETTINGS=(
    [split_task]="task_sequence=split_fashion_mnist task_sequence.scenario=task"
    [split_class]="task_sequence=split_fashion_mnist task_sequence.scenario=class"
    [permuted_domain]="task_sequence=permuted_fashion_mnist task_sequence.scenario=domain task_sequence.num_tasks=5"
)

multirun() {  # multirun DIR OVERRIDES...: skipped once done; an interrupted one resumes its jobs
    local dir=$1
    shift
    [[ -e $dir/.done ]] && { echo "== $dir: done before, kept"; return; }
    echo "== $dir: $*"
    uv run python run.py -m "$@" "${COMMON[@]}" "hydra.sweep.dir=$dir" >"$dir.log" 2>&1 ||
        { echo "failed, see $dir.log" >&2; exit 1; }
    touch "$dir/.done"
}
best_lambda() { uv run python scripts/results_table.py best-lambda "$1"; }
