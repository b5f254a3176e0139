"""pycaffe's ``caffe.proto.caffe_pb2``: the generated schema under Caffe's name.

netforge's schema is Caffe's (same messages, same field numbers, extensions at >= 10000), so
``caffe_pb2.NetParameter()``, ``caffe_pb2.Datum()``, ``caffe_pb2.TRAIN`` work as in Caffe
scripts. This is the same module object as ``netforge.netforge_pb2``, not a copy.
"""

import sys

from netforge import netforge_pb2

sys.modules[__name__] = netforge_pb2
