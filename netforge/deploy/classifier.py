"""pycaffe's ``caffe.Classifier``: a TEST-phase Net that classifies (H, W, K) images.

    clf = netforge.Classifier("deploy.prototxt", "w.caffemodel", image_dims=(256, 256),
                              mean=np.array([104, 117, 123]), raw_scale=255,
                              channel_swap=(2, 1, 0))
    probs = clf.predict([netforge.io.load_image("cat.jpg")])     # (1, classes)
"""

from __future__ import annotations

import numpy as np

from netforge.deploy import caffe_io as io
from netforge.errors import ConfigError
from netforge.net import Net


class Classifier(Net):
    """Resize to ``image_dims``, take the centre crop (or Caffe's 10 crops) of the net's
    input size, preprocess with ``io.Transformer``, forward, and average the crops.

    Args:
        model_file: deploy prototxt; pretrained_file: weights.
        image_dims: (H, W) images are resized to before cropping (default: the input's).
        mean: per-channel mean (K,) or mean image, in the net's channel order.
        input_scale: factor after the mean; raw_scale: factor before it (255 for images
            from ``io.load_image``); channel_swap: e.g. (2, 1, 0) for RGB -> BGR.
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        super().__init__(model_file, "test", weights=pretrained_file)
        if not self.inputs:
            raise ConfigError(f'net "{self.name}" has no Input layer to classify images with')
        in_ = self.inputs[0]
        self.transformer = io.Transformer({in_: self.blobs[in_].shape})
        self.transformer.set_transpose(in_, (2, 0, 1))
        if mean is not None:
            self.transformer.set_mean(in_, mean)
        if input_scale is not None:
            self.transformer.set_input_scale(in_, input_scale)
        if raw_scale is not None:
            self.transformer.set_raw_scale(in_, raw_scale)
        if channel_swap is not None:
            self.transformer.set_channel_swap(in_, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].shape[2:])
        self.image_dims = np.array(image_dims if image_dims is not None else self.crop_dims)

    def predict(self, inputs, oversample: bool = True) -> np.ndarray:
        """(N, classes) scores of the net's first output for N (H, W, K) images: a list, an
        (N, H, W, K) array, or one image ((H, W, K), or (H, W) grey) giving N = 1."""
        if isinstance(inputs, np.ndarray) and inputs.ndim in (2, 3):
            # One image, not a list of its rows (pycaffe's predict iterates its argument).
            inputs = [inputs[..., None] if inputs.ndim == 2 else inputs]
        if not len(inputs):
            raise ConfigError("predict needs at least one image")
        dims = tuple(int(d) for d in self.image_dims)
        resized = np.stack([io.resize_image(np.asarray(im), dims) for im in inputs])
        crop_dims = tuple(int(d) for d in self.crop_dims)
        if oversample:
            crops = io.oversample(resized, crop_dims)
        else:
            top, left = io.center_offset(dims, crop_dims)
            crops = resized[:, top:top + crop_dims[0], left:left + crop_dims[1], :]
        in_ = self.inputs[0]
        batch = np.stack([self.transformer.preprocess(in_, crop) for crop in crops])
        scores = self.forward_all(**{in_: batch})[self.outputs[0]]
        scores = scores.reshape(len(scores), -1)
        if oversample:
            scores = scores.reshape(len(scores) // 10, 10, -1).mean(axis=1)
        return scores
