"""Deployment: frozen models, preprocessing, predict, the Classifier, pycaffe's io, ONNX."""
