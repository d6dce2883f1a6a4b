"""Layer 2, data: images and labels. A dataset in memory (`image_data`), the built-in data
sets and the files they are read from (`images`, `files`), your own (`own`), and the task
sequences cut from them, learned in one of three scenarios (`sequences`, `scenarios`).

The names below are the ones a config or your own loader refers to, e.g.
`task_sequence.dataset={_target_: ewcexp.data.image_folder, path: ...}`."""

from ewcexp.data.image_data import DataUnavailable, ImageData
from ewcexp.data.images import load_images
from ewcexp.data.own import as_image_data, image_folder, tensor_file

__all__ = [
    "DataUnavailable",
    "ImageData",
    "as_image_data",
    "image_folder",
    "load_images",
    "tensor_file",
]
