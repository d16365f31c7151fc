"""The model layer: the CRNN description (layer specs, parameters, state shapes) and the terms of
its primitive function Φ (:mod:`.energy`), the LE/KD auxiliary signals, skip links, activations,
and the BP-trained VGG teachers. Imports nothing else of eqkern."""

from eqkern.model.crnn import CRNN, Conv, LayerSpec, Linear

__all__ = ["CRNN", "Conv", "Linear", "LayerSpec"]
