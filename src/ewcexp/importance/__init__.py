"""Layer 3, importance: how much each parameter matters to a task. The contract estimators
share (`contract`), the quadratic penalty built from an importance (`penalty`), the per-sample
gradient engine (`per_sample`), the Fisher (`fisher`) and its Kronecker factors (`kfac`),
MAS's importance (`mas`), and the diagnostics that compare estimators (`diagnostics`)."""

from ewcexp.importance.contract import ImportanceEstimator, TaskData

__all__ = ["ImportanceEstimator", "TaskData"]
