"""Layer 6, training: the loop (`runner`: train a task, consolidate it, evaluate every task,
checkpoint) and what it runs on: one task's minibatch steps (`loop`), evaluation, the device,
the optimizer, the run's state and its checkpoints, and stopping for a requeue."""
