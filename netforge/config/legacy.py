"""Upgrading Caffe's legacy net formats to the modern ``layer`` form.

Caffe nets went through three schemas. Files and weights from each are still in the wild
(the model zoo's older ``.caffemodel`` files are V1), so netforge upgrades them on read,
following Caffe's ``upgrade_proto.cpp`` rule for rule:

  V0  ``layers { layer { name type ...flat settings... } bottom top }`` with separate
      "padding" layers  ->  V1 (padding folded into the next conv/pool)
  V1  ``layers { name type: ENUM blobs_lr weight_decay <x>_param }``  ->  modern ``layer``
      (enum -> type string, blobs_lr/weight_decay -> ``param { lr_mult decay_mult }``,
      deprecated data-layer transform fields -> ``transform_param``)

Each step is a pure function on a NetParameter so it can be tested alone.
"""

from __future__ import annotations

from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError

V1 = pb.V1LayerParameter

# V1 enum type -> modern type string (Caffe's UpgradeV1LayerType).
V1_TYPE_NAMES: dict[int, str] = {
    V1.NONE: "",
    V1.ABSVAL: "AbsVal",
    V1.ACCURACY: "Accuracy",
    V1.ARGMAX: "ArgMax",
    V1.BNLL: "BNLL",
    V1.CONCAT: "Concat",
    V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    V1.CONVOLUTION: "Convolution",
    V1.DATA: "Data",
    V1.DECONVOLUTION: "Deconvolution",
    V1.DROPOUT: "Dropout",
    V1.DUMMY_DATA: "DummyData",
    V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    V1.ELTWISE: "Eltwise",
    V1.EXP: "Exp",
    V1.FLATTEN: "Flatten",
    V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output",
    V1.HINGE_LOSS: "HingeLoss",
    V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData",
    V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct",
    V1.LRN: "LRN",
    V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    V1.MVN: "MVN",
    V1.POOLING: "Pooling",
    V1.POWER: "Power",
    V1.RELU: "ReLU",
    V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax",
    V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    V1.SPLIT: "Split",
    V1.SLICE: "Slice",
    V1.TANH: "TanH",
    V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

# Type-specific parameter messages: V1 and modern LayerParameter share the field names, so
# each is copied across by name (the field numbers differ, which is why a copy is needed).
_V1_PARAM_FIELDS = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param",
    "convolution_param", "data_param", "dropout_param", "dummy_data_param", "eltwise_param",
    "exp_param", "hdf5_data_param", "hdf5_output_param", "hinge_loss_param",
    "image_data_param", "infogain_loss_param", "inner_product_param", "lrn_param",
    "memory_data_param", "mvn_param", "pooling_param", "power_param", "relu_param",
    "sigmoid_param", "softmax_param", "slice_param", "tanh_param", "threshold_param",
    "window_data_param", "transform_param", "loss_param",
)

# Data layers whose own parameter message carried scale/mean_file/crop_size/mirror before
# TransformationParameter existed (Caffe's UpgradeNetDataTransformation).
_TRANSFORM_OWNERS = {
    V1.DATA: "data_param",
    V1.IMAGE_DATA: "image_data_param",
    V1.WINDOW_DATA: "window_data_param",
}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def is_v0(net: pb.NetParameter) -> bool:
    """A V0 net nests its layer settings in ``layers { layer { ... } }``."""
    return any(v1.HasField("layer") for v1 in net.layers)


def upgrade_legacy_net(net: pb.NetParameter, source: str = "net") -> bool:
    """Upgrade a V0 or V1 ``net`` in place to the modern ``layer`` form.

    Returns True when anything was upgraded. A net that mixes ``layer`` and ``layers`` is
    refused, as Caffe does: there is no sound order to put the two lists in.
    """
    if not net.layers:
        return False
    if net.layer:
        raise ConfigError(
            f"{source}: the net has both `layer` and legacy `layers` entries; "
            "use one form only"
        )
    if is_v0(net):
        upgrade_v0_net(net, source)
    upgrade_v1_data_transform(net)
    upgrade_v1_net(net, source)
    return True


# -- V1 -> modern ------------------------------------------------------------------------


def upgrade_v1_data_transform(net: pb.NetParameter) -> None:
    """Move the deprecated transform fields of V1 data layers into ``transform_param``."""
    for v1 in net.layers:
        owner = _TRANSFORM_OWNERS.get(v1.type)
        if owner is None or not v1.HasField(owner):
            continue
        param = getattr(v1, owner)
        for name in _TRANSFORM_FIELDS:
            if param.HasField(name):
                setattr(v1.transform_param, name, getattr(param, name))
                param.ClearField(name)


def upgrade_v1_layer(v1: pb.V1LayerParameter, source: str = "net") -> pb.LayerParameter:
    """One V1LayerParameter as a modern LayerParameter (Caffe's UpgradeV1LayerParameter)."""
    layer = pb.LayerParameter()
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    for rule in v1.include:
        layer.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        layer.exclude.add().CopyFrom(rule)
    if v1.HasField("type"):
        if v1.type not in V1_TYPE_NAMES:
            raise ConfigError(f'{source}: layer "{v1.name}" has unknown V1 type {v1.type}')
        layer.type = V1_TYPE_NAMES[v1.type]
    for blob in v1.blobs:
        layer.blobs.add().CopyFrom(blob)

    # Per-blob settings: names, share modes and multipliers each fill ParamSpec k in turn.
    def spec(k: int) -> pb.ParamSpec:
        while len(layer.param) <= k:
            layer.param.add()
        return layer.param[k]

    for k, name in enumerate(v1.param):
        spec(k).name = name
    for k, mode in enumerate(v1.blob_share_mode):
        spec(k).share_mode = (
            pb.ParamSpec.PERMISSIVE if mode == V1.PERMISSIVE else pb.ParamSpec.STRICT
        )
    for k, lr in enumerate(v1.blobs_lr):
        spec(k).lr_mult = lr
    for k, decay in enumerate(v1.weight_decay):
        spec(k).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)

    for field in _V1_PARAM_FIELDS:
        if v1.HasField(field):
            getattr(layer, field).CopyFrom(getattr(v1, field))
    if v1.HasField("layer"):
        # Caffe logs and drops a V0 layer left inside a V1 entry; netforge refuses it, since
        # dropping settings silently would build a different net.
        raise ConfigError(
            f'{source}: layer "{v1.name}" mixes V1 fields with a nested V0 `layer`; '
            "this cannot be upgraded"
        )
    return layer


def upgrade_v1_net(net: pb.NetParameter, source: str = "net") -> None:
    """Replace ``net.layers`` (V1) by the equivalent ``net.layer`` list, in place."""
    upgraded = [upgrade_v1_layer(v1, source) for v1 in net.layers]
    net.ClearField("layers")
    net.ClearField("layer")
    net.layer.extend(upgraded)


# -- V0 -> V1 ----------------------------------------------------------------------------

# V0 type string -> V1 enum (Caffe's UpgradeV0LayerType). "padding" is folded away first.
V0_TYPES: dict[str, int] = {
    "accuracy": V1.ACCURACY,
    "bnll": V1.BNLL,
    "concat": V1.CONCAT,
    "conv": V1.CONVOLUTION,
    "data": V1.DATA,
    "dropout": V1.DROPOUT,
    "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA,
    "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL,
    "images": V1.IMAGE_DATA,
    "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT,
    "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": V1.POOLING,
    "relu": V1.RELU,
    "sigmoid": V1.SIGMOID,
    "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS,
    "split": V1.SPLIT,
    "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}


def upgrade_v0_padding_layers(net: pb.NetParameter, source: str = "net") -> None:
    """Fold each V0 "padding" layer into the conv/pool layer that reads its output."""
    last_producer: dict[str, int] = {name: -1 for name in net.input}
    kept: list[pb.V1LayerParameter] = []
    for i, connection in enumerate(net.layers):
        v0 = connection.layer
        if v0.type != "padding":
            kept.append(pb.V1LayerParameter())
            kept[-1].CopyFrom(connection)
        for j, blob in enumerate(connection.bottom):
            if blob not in last_producer:
                raise ConfigError(f'{source}: layer "{v0.name}" reads unknown blob "{blob}"')
            producer = last_producer[blob]
            if producer < 0 or net.layers[producer].layer.type != "padding":
                continue
            padding = net.layers[producer]
            if v0.type not in ("conv", "pool"):
                raise ConfigError(
                    f'{source}: padding layer "{padding.layer.name}" feeds layer "{v0.name}" '
                    f'of type "{v0.type}"; only conv and pool layers can absorb padding'
                )
            if len(connection.bottom) != 1 or len(padding.bottom) != 1 or len(padding.top) != 1:
                raise ConfigError(
                    f'{source}: padding layer "{padding.layer.name}" and its consumer '
                    f'"{v0.name}" must each have exactly one input'
                )
            kept[-1].layer.pad = padding.layer.pad
            kept[-1].bottom[j] = padding.bottom[0]
        for blob in connection.top:
            last_producer[blob] = i
    net.ClearField("layers")
    net.layers.extend(kept)


def _v0_error(source: str, v0: pb.V0LayerParameter, field: str) -> ConfigError:
    return ConfigError(
        f'{source}: V0 layer "{v0.name}" of type "{v0.type}" cannot carry the setting "{field}"'
    )


def upgrade_v0_layer(connection: pb.V1LayerParameter, source: str = "net"
                     ) -> pb.V1LayerParameter:
    """One V0 layer (inside its V1 "connection") as a V1LayerParameter.

    Follows Caffe's UpgradeV0LayerParameter: each flat V0 setting moves into the parameter
    message of the layer type it belongs to; a setting the type cannot take is an error.
    """
    if not connection.HasField("layer"):
        # Caffe would keep only its bottoms and tops; dropping the rest silently would
        # build a different net.
        raise ConfigError(
            f'{source}: layer "{connection.name}" is in the V1 form but the net also has V0 '
            "layers; a net must use one form"
        )
    out = pb.V1LayerParameter()
    out.bottom.extend(connection.bottom)
    out.top.extend(connection.top)
    v0 = connection.layer
    kind = v0.type
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if kind not in V0_TYPES:
            raise ConfigError(f'{source}: V0 layer "{v0.name}" has unknown type "{kind}"')
        out.type = V0_TYPES[kind]
    for blob in v0.blobs:
        out.blobs.add().CopyFrom(blob)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)

    def target(field: str, by_type: dict[str, str]):
        """The parameter message of this layer's type that takes ``field``."""
        if kind not in by_type:
            raise _v0_error(source, v0, field)
        return getattr(out, by_type[kind])

    conv_ip = {"conv": "convolution_param", "innerproduct": "inner_product_param"}
    conv_pool = {"conv": "convolution_param", "pool": "pooling_param"}
    sources = {"data": "data_param", "hdf5_data": "hdf5_data_param",
               "images": "image_data_param", "window_data": "window_data_param",
               "infogain_loss": "infogain_loss_param"}
    batches = {"data": "data_param", "hdf5_data": "hdf5_data_param",
               "images": "image_data_param", "window_data": "window_data_param"}

    if v0.HasField("num_output"):
        target("num_output", conv_ip).num_output = v0.num_output
    if v0.HasField("biasterm"):
        target("biasterm", conv_ip).bias_term = v0.biasterm
    if v0.HasField("weight_filler"):
        target("weight_filler", conv_ip).weight_filler.CopyFrom(v0.weight_filler)
    if v0.HasField("bias_filler"):
        target("bias_filler", conv_ip).bias_filler.CopyFrom(v0.bias_filler)
    # Convolution takes repeated pad/kernel_size/stride; pooling takes single values.
    for v0_field, new_field in (("pad", "pad"), ("kernelsize", "kernel_size"),
                                ("stride", "stride")):
        if v0.HasField(v0_field):
            param = target(v0_field, conv_pool)
            value = getattr(v0, v0_field)
            if kind == "conv":
                getattr(param, new_field).append(value)
            else:
                setattr(param, new_field, value)
    if v0.HasField("group"):
        target("group", {"conv": "convolution_param"}).group = v0.group
    if v0.HasField("pool"):
        target("pool", {"pool": "pooling_param"}).pool = v0.pool
    if v0.HasField("dropout_ratio"):
        target("dropout_ratio", {"dropout": "dropout_param"}).dropout_ratio = v0.dropout_ratio
    for name in ("local_size", "alpha", "beta", "k"):
        if v0.HasField(name):
            setattr(target(name, {"lrn": "lrn_param"}), name, getattr(v0, name))
    if v0.HasField("source"):
        target("source", sources).source = v0.source
    if v0.HasField("batchsize"):
        target("batchsize", batches).batch_size = v0.batchsize
    # Preprocessing settings of any data layer go to transform_param.
    for v0_field, new_field in (("scale", "scale"), ("meanfile", "mean_file"),
                                ("cropsize", "crop_size"), ("mirror", "mirror")):
        if v0.HasField(v0_field):
            setattr(out.transform_param, new_field, getattr(v0, v0_field))
    if v0.HasField("rand_skip"):
        target("rand_skip", {"data": "data_param", "images": "image_data_param"}).rand_skip = (
            v0.rand_skip
        )
    if v0.HasField("shuffle_images"):
        target("shuffle_images", {"images": "image_data_param"}).shuffle = v0.shuffle_images
    for name in ("new_height", "new_width"):
        if v0.HasField(name):
            setattr(target(name, {"images": "image_data_param"}), name, getattr(v0, name))
    if v0.HasField("concat_dim"):
        target("concat_dim", {"concat": "concat_param"}).concat_dim = v0.concat_dim
    window = {"window_data": "window_data_param"}
    for v0_field, new_field in (("det_fg_threshold", "fg_threshold"),
                                ("det_bg_threshold", "bg_threshold"),
                                ("det_fg_fraction", "fg_fraction"),
                                ("det_context_pad", "context_pad"),
                                ("det_crop_mode", "crop_mode")):
        if v0.HasField(v0_field):
            setattr(target(v0_field, window), new_field, getattr(v0, v0_field))
    if v0.HasField("hdf5_output_param"):
        target("hdf5_output_param", {"hdf5_output": "hdf5_output_param"}).CopyFrom(
            v0.hdf5_output_param
        )
    for name in ("new_num", "new_channels"):
        if v0.HasField(name):
            raise _v0_error(source, v0, name)
    return out


def upgrade_v0_net(net: pb.NetParameter, source: str = "net") -> None:
    """Upgrade a V0 net to V1 in place (padding layers first, then every layer)."""
    upgrade_v0_padding_layers(net, source)
    upgraded = [upgrade_v0_layer(connection, source) for connection in net.layers]
    net.ClearField("layers")
    net.layers.extend(upgraded)


# -- modern-form fix-ups -----------------------------------------------------------------


def upgrade_batch_norm_params(net: pb.NetParameter) -> None:
    """Old BatchNorm layers listed three ``param { lr_mult: 0 }``; the layer now fixes its
    statistics itself, so Caffe (UpgradeNetBatchNorm) drops those specs."""
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            layer.ClearField("param")
