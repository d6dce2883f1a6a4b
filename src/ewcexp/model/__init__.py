"""Layer 2, models: the networks a task sequence is learned with (`networks`), and how a
config's `model` node becomes one, your own included (`build_model`)."""

from ewcexp.model.networks import FloatImages, as_float, build_model

__all__ = ["FloatImages", "as_float", "build_model"]
