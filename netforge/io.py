"""pycaffe's name for its image helpers: ``import caffe.io`` becomes ``import netforge.io``.

The code lives in ``netforge.deploy.caffe_io``; this module only makes the pycaffe spelling
importable, as the very same module object (so ``netforge.io is netforge.deploy.caffe_io``,
whichever way it was reached first).
"""

import sys

from netforge.deploy import caffe_io

sys.modules[__name__] = caffe_io
