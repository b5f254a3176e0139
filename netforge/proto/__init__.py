"""pycaffe's ``caffe.proto`` package: ``from netforge.proto import caffe_pb2``."""
