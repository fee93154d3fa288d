"""Images in, uint8 tensors out: find a dataset, decode it once, split it, augment whole batches.

The airbench way: the whole dataset is one ``N x 3 x H x W`` uint8 tensor that is moved to
the training device once (or, when it does not fit there, streamed batch by batch from the
memory-mapped cache: :mod:`~search.data.placement`); augmentation and normalization are
tensor ops on a whole batch, never a per-image Python loop, so the GPU (or the CPU's vector
units) is never waiting on a ``DataLoader``.

Sources (see :func:`locate`): torchvision's CIFAR-10/100 python pickles, class-folder trees
(``train/<class>/*`` + ``test/<class>/*``, or one tree of ``<class>/*`` folders that is split
here), and ``.tar.gz``/``.tgz``/``.zip`` archives of either, extracted once into the cache.

Decoding JPEGs is the slow part (about 10 s for CIFAR-10), so it happens once per source:
the result is saved with :func:`torch.save` in the user cache, keyed by the source's path,
size and mtime and by ``image_size``. Every later load (every trial, every Ray worker) maps
that file and takes a fraction of a second.

Modules, each importing only those above it:

- :mod:`~search.data.layout`: a dataset found on disk (:class:`Layout`), folders by name.
- :mod:`~search.data.cache`: the user cache folder, cache keys, the tensor files, locks.
- :mod:`~search.data.placement`: whether a trial copies the training set to its device or
  streams it (``data.on_device``).
- :mod:`~search.data.splits`: :class:`TensorSplit`, :class:`ImageDataset`, splits, channel stats.
- :mod:`~search.data.images`: one image to RGB pixels, the decoding ``predict`` shares.
- :mod:`~search.data.progress`: the progress bar (or log lines) of a long cache build.
- :mod:`~search.data.decode`: image decoding in a process pool, resizing.
- :mod:`~search.data.readers`: the formats (:data:`FORMATS`: CIFAR pickles, class folders),
  each recognised, fingerprinted and read into the cache's dict; a new format registers here.
- :mod:`~search.data.archives`: safe extraction of archives into the cache.
- :mod:`~search.data.sources`: where the dataset is (named location, cache, download).
- :mod:`~search.data.load`: :func:`load_dataset`.
- :mod:`~search.data.augment`: :func:`augment_batch` and :func:`normalize` (independent of the rest).

This package only re-exports the public names.
"""

from search.data.augment import augment_batch, downscale, normalize
from search.data.cache import cache_dir
from search.data.load import load_dataset
from search.data.sources import dataset_root, locate
from search.data.splits import ImageDataset, TensorSplit

__all__ = [
    "ImageDataset",
    "TensorSplit",
    "augment_batch",
    "downscale",
    "cache_dir",
    "dataset_root",
    "load_dataset",
    "locate",
    "normalize",
]
