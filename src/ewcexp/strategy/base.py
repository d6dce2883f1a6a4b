"""The strategy contract: what the runner asks of every continual-learning method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from ewcexp.config.schema import NonNegativeFloat
from ewcexp.data.scenarios import Task
from ewcexp.importance.contract import ImportanceEstimator, TaskData
from ewcexp.importance.penalty import QuadraticPenalty, Tensors


class Strategy:
    """A continual-learning method. The runner calls its hooks in this order:

        for each task:
            training_tasks(seen)              which of the tasks seen so far to train on now
            for each minibatch step:
                extra_loss(model, inputs, logits)     a term added to the step's loss
                write_penalty_gradient(params)    before loss.backward(): set .grad
                constrain_gradient(params, ...)   after it (memory_use "constraint" only)
                after_step(params)                after optimizer.step()
            end_task(model, params, data)     consolidate the task just trained
            (every task is evaluated; a checkpoint holds state_dict())

    A stop mid-task checkpoints state_dict() too, and a resumed run restores it with
    load_state_dict() before its first hook. The defaults are those of fine-tuning.

    To add a method, subclass this (or `PenaltyStrategy`, for an importance-weighted
    quadratic penalty) in a module of `ewcexp.strategy` and add conf/strategy/<name>.yaml
    with `_target_` naming the class: its constructor's typed parameters are its config keys.
    """

    name: ClassVar[str]  # as results.json and the logs call it
    # what a replay memory (replay.size > 0) is for: "batch", its samples join each step's
    # minibatch (experience replay); "constraint", `constrain_gradient` gets the memory's
    # loss; "none", the method refuses a memory
    memory_use: ClassVar[Literal["batch", "constraint", "none"]] = "batch"
    # whether its importances come from the training steps themselves (SI, EWC++): then a task
    # it never trained (task_sequence.pretrained_on's task 0) gets none
    importance_from_training: ClassVar[bool] = False

    def __init__(self) -> None:
        self.penalty: QuadraticPenalty | None = None
        self.importance: ImportanceEstimator | None = None

    def training_tasks(self, seen: list[Task]) -> list[Task]:
        """The tasks whose data the current task trains on (`seen[-1]` is the current one)."""
        return seen[-1:]

    def extra_loss(self, model: nn.Module, inputs: Tensor, logits: Tensor) -> Tensor | None:
        """A term added to the step's loss, from the step's inputs (memory samples included)
        and the model's logits on them: for methods that distill (None: nothing added)."""
        return None

    def constrain_gradient(self, params: Tensors, memory_loss: Callable[[], Tensor]) -> None:
        """With `memory_use` "constraint": change the step's gradient in `.grad` (backward
        done) given `memory_loss()`, the loss on a minibatch drawn from the memory."""

    def write_penalty_gradient(self, params: Tensors) -> None:
        """Set `.grad` to the penalty's gradient, for `loss.backward()` to add to: the
        optimizer's `zero_grad` and the penalty in one pass. Without a penalty term, `.grad`
        is set to None, so backward stores its gradient instead of adding it to zeros."""
        if self.penalty is None or not self.penalty.terms:
            for p in params:
                p.grad = None
        else:
            self.penalty.write_gradient(params)

    def after_step(self, params: Tensors) -> None:
        """After each optimizer step, `.grad` still holding the step's gradient (penalty
        included): for methods that integrate along the training path."""

    def end_task(self, model: nn.Module, params: Tensors, data: TaskData) -> Tensors | None:
        """Consolidate the task just trained: estimate the importance of its parameters (if
        the strategy has an estimator) and fold it into the penalty. Returns that importance,
        for the logs."""
        importance = self.importance(model, data) if self.importance is not None else None
        self.consolidate(params, importance)
        return importance

    def consolidate(self, params: Tensors, importance: Tensors | None) -> None:
        """Fold the finished task (parameters θ*, importance) into the penalty: the one thing
        penalty strategies do differently."""

    @property
    def importance_kind(self) -> str | None:
        """What `end_task` returns, naming its logs and figures: "fisher", "mas", ..."""
        return None if self.importance is None else self.importance.kind

    def penalty_value(self, params: Tensors) -> float:
        return 0.0 if self.penalty is None else self.penalty.value(params)

    def accumulated_importance(self) -> Tensors | None:
        """The importance merged over tasks, for strategies that keep one (for the logs)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue: the penalty's terms."""
        return {} if self.penalty is None else {"penalty": self.penalty.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.penalty is not None:
            self.penalty.load_state_dict(state["penalty"])


class PenaltyStrategy(Strategy):
    """A quadratic penalty of strength λ, around importances from `importance` (if given)."""

    def __init__(
        self, strength: NonNegativeFloat, importance: ImportanceEstimator | None = None
    ) -> None:
        super().__init__()
        self.penalty = QuadraticPenalty(strength)
        self.importance = importance
