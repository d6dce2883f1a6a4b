"""Continual-learning strategies, one module per family; conf/strategy/<option>.yaml names
its class with `_target_`. `base` holds the contract the runner relies on, `penalty` the
quadratic core the penalty strategies share."""
