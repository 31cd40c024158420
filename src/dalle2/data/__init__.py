"""Captioned datasets behind one interface (see ``base.py``) and one way to open them by name.

Dataset specs, as written on the command line:
  ``shapes``                    procedurally rendered captioned scenes (built in, with ground truth)
  ``shapes:KIND=W,...``         the same with another mix of scene kinds (single, relation, count)
  ``fashion-mnist[:DIR]``       Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist)
  ``mnist[:DIR]``               MNIST IDX files
  ``folder:PATH``               images + ``metadata.jsonl`` (file_name, text) or sidecar ``.txt`` captions
  ``webdataset:PATTERN``        streamed tar shards of (image, txt), brace patterns allowed
"""

from __future__ import annotations

from torch.utils.data import Dataset, IterableDataset

from dalle2.data.base import DatasetError, Sample, collate, pil_to_tensor, tensor_to_pil

__all__ = ["DatasetError", "Sample", "collate", "open_dataset", "pil_to_tensor", "tensor_to_pil", "KINDS"]

KINDS = ("shapes", "fashion-mnist", "mnist", "folder:PATH", "webdataset:PATTERN")


def open_dataset(
    spec: str,
    split: str = "train",
    resolution: int = 32,
    seed: int = 0,
    length: int | None = None,
) -> Dataset | IterableDataset:
    """Open a dataset by its spec string (see the module docstring).

    ``split`` is ``train`` or ``test`` for every kind; ``shapes`` also has ``heldout`` (the declared
    held-out attribute combinations). ``length`` caps the number of samples (shapes: sets it).
    """
    if not 8 <= resolution <= 1024:
        raise DatasetError(f"resolution must be between 8 and 1024 pixels, got {resolution}")
    name, _, arg = spec.partition(":")
    if name == "shapes":
        from dalle2.data.shapes import ShapesDataset

        return ShapesDataset(split=split, resolution=resolution, seed=seed, length=length, kinds=arg or None)
    if name in ("fashion-mnist", "mnist"):
        from dalle2.data.idx import IdxDataset

        return IdxDataset(name, root=arg or None, split=split, resolution=resolution, length=length)
    if name == "folder":
        if not arg:
            raise DatasetError("folder datasets need a path: --data folder:PATH")
        from dalle2.data.folder import FolderDataset

        return FolderDataset(arg, resolution=resolution, length=length)
    if name == "webdataset":
        if not arg:
            raise DatasetError("webdataset needs a shard pattern: --data 'webdataset:shards/{000..009}.tar'")
        from dalle2.data.webdataset import ShardDataset

        return ShardDataset(arg, resolution=resolution, length=length)
    raise DatasetError(f"unknown dataset {spec!r}; choose one of: {', '.join(KINDS)}")
