"""Layer 2, data: images and labels. The files on disk (`files`), the data sets, built in or
your own (`images`), and the task sequences cut from them (`sequences`).

The names below are the ones a config or your own loader refers to, e.g.
`task_sequence.dataset={_target_: ewcexp.data.image_folder, path: ...}`."""

from ewcexp.data.images import (
    DataUnavailable,
    ImageData,
    as_image_data,
    image_folder,
    load_images,
    tensor_file,
)

__all__ = [
    "DataUnavailable",
    "ImageData",
    "as_image_data",
    "image_folder",
    "load_images",
    "tensor_file",
]
