"""eqkern.data: offline datasets as tensors (:mod:`.datasets`), batch augmentation
(:mod:`.crop_flip`) and the training-data sources the engine iterates (:mod:`.sources`).

Layering: this package sits at the bottom (beside eqkern.model) and imports only torch, numpy,
the standard library, torchvision (optional, lazily) and eqkern.errors / eqkern.validate.
"""

from eqkern.data.crop_flip import crop_flip
from eqkern.data.datasets import DATASETS, DataSplit, iterate_batches, load_dataset
from eqkern.data.sources import (BatchSource, DatasetSource, LoaderSource, TensorSource,
                                 TrainingData, as_source, as_training_data)

__all__ = ["load_dataset", "DataSplit", "DATASETS", "iterate_batches", "crop_flip",
           "as_source", "as_training_data", "TrainingData", "BatchSource", "TensorSource",
           "DatasetSource", "LoaderSource"]
