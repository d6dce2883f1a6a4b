"""Layer 4, strategies: the continual-learning methods, one module per family;
conf/strategy/<option>.yaml names its class with `_target_`. `base` holds the contract the
runner relies on; the quadratic penalty they share is `ewcexp.importance.penalty`."""
