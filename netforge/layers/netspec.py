"""pycaffe's net specification: nets written as Python calls, serialised as a NetParameter.

    from netforge import layers as L, params as P
    n = netforge.NetSpec()
    n.data, n.label = L.Data(source="db", backend=P.Data.LMDB, batch_size=64, ntop=2,
                             transform_param=dict(scale=1. / 255))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20)
    print(n.to_proto())

The rules are Caffe's python/caffe/net_spec.py, so its examples run unchanged: a keyword goes
to the layer's own ``<type>_param`` message when that message has the field, else to the
LayerParameter (``loss_weight``, ``param``, ``include``, any ``*_param``); dicts become
messages, lists repeated fields, a scalar given to a repeated field a one-element list;
``ntop`` and ``in_place`` shape the tops. Blobs are named after the NetSpec attribute they are
assigned to, the rest ``<Type><k>``; a layer is named after its first top.

It lives with the layer catalogue because ``from netforge import layers as L`` is pycaffe's
spelling: the package's ``__getattr__`` hands CamelCase names (``L.Convolution``) to
``layer_function`` below, while its lower-case names stay the implementation modules. It
needs only the generated schema, so it imports nothing above it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

from netforge import netforge_pb2 as pb


def _param_field_names() -> dict[str, str]:
    """Layer type -> its parameter field, from the schema: ConvolutionParameter's field is
    ``convolution_param``, so "Convolution" -> "convolution_param" (pycaffe's
    param_name_dict). Types sharing another's message are added by hand."""
    names = {}
    for field in pb.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                names[type_name[:-len("Parameter")]] = field.name
    # Caffe's Deconvolution reads convolution_param; pycaffe makes callers spell it out, which
    # nobody remembers, so the short form works here too.
    names.setdefault("Deconvolution", "convolution_param")
    return names


_PARAM_FIELDS = _param_field_names()


def assign_proto(proto, name: str, value) -> None:
    """Set field ``name`` of ``proto`` from a Python value (pycaffe's assign_proto)."""
    target = getattr(proto, name)
    repeated = hasattr(target, "extend")
    if repeated and not isinstance(value, (list, tuple)):
        value = [value]
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], dict):
            for item in value:
                element = target.add()
                for key, sub in item.items():
                    assign_proto(element, key, sub)
        else:
            field = proto.DESCRIPTOR.fields_by_name[name]
            if field.enum_type is not None:
                value = [_enum_value(proto, name, v) for v in value]
            target.extend(value)
    elif isinstance(value, dict):
        for key, sub in value.items():
            assign_proto(target, key, sub)
    else:
        setattr(proto, name, _enum_value(proto, name, value))


def _enum_value(proto, name: str, value):
    """An enum field also takes its value's name, any case: ``phase="train"`` (so
    ``netforge.TRAIN``, a string, works where pycaffe passes ``caffe.TRAIN``)."""
    field = proto.DESCRIPTOR.fields_by_name[name]
    if field.enum_type is not None and isinstance(value, str):
        number = field.enum_type.values_by_name.get(value.upper())
        if number is None:
            known = ", ".join(field.enum_type.values_by_name)
            raise ValueError(f'{name}: no value "{value}" (known: {known})')
        return number.number
    return value


class Top:
    """One output blob of a layer (the ``n``-th top of ``fn``)."""

    def __init__(self, fn: Function, n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> pb.NetParameter:
        """The layers needed to compute this top, with generated names."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames) -> None:
        self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer: its type, input tops and keyword parameters."""

    def __init__(self, type_name: str, inputs, params: dict):
        self.type_name = type_name
        self.inputs = tuple(inputs)
        for top in self.inputs:
            if not isinstance(top, Top):
                raise TypeError(f"L.{type_name}: bottoms must be tops made by other layers "
                                f"(e.g. n.data), got {top!r}")
        params = dict(params)
        self.ntop = int(params.pop("ntop", 1))
        self.in_place = bool(params.pop("in_place", False))
        self.params = params
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _top_name(self, top: Top, names, autonames) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _name(self, names, autonames) -> str:
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottoms = []
        for top in self.inputs:
            top._to_proto(layers, names, autonames)
            bottoms.append(layers[top.fn].top[top.n])
        layer = pb.LayerParameter(type=self.type_name)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        layer.name = self._name(names, autonames)
        own = _PARAM_FIELDS.get(self.type_name)
        for key, value in self.params.items():
            if key.endswith("param") or own is None or not _has_field(getattr(layer, own), key):
                _assign_checked(layer, key, value, self.type_name)
            else:
                assign_proto(getattr(layer, own), key, value)
        layers[self] = layer


def _has_field(message, name: str) -> bool:
    return name in message.DESCRIPTOR.fields_by_name


def _assign_checked(layer: pb.LayerParameter, key: str, value, type_name: str) -> None:
    if not _has_field(layer, key):
        own = _PARAM_FIELDS.get(type_name)
        where = f"{own} nor LayerParameter" if own else "LayerParameter"
        raise AttributeError(f'L.{type_name}: no field "{key}" in {where}')
    assign_proto(layer, key, value)


def to_proto(*tops: Top) -> pb.NetParameter:
    """A NetParameter with every layer needed to compute ``tops`` (names generated)."""
    layers: OrderedDict = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = pb.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Tops assigned as attributes (``n.conv1 = L.Convolution(...)``) name their blobs and
    layers; ``to_proto()`` writes every layer they need, in the order they were assigned."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top named {name!r}") from None

    __setitem__ = __setattr__

    def __getitem__(self, name: str):
        return self.tops[name]

    def keys(self) -> list[str]:
        return list(self.tops)

    def vals(self) -> list:
        return list(self.tops.values())

    def to_proto(self) -> pb.NetParameter:
        names = {top: name for name, top in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = pb.NetParameter()
        net.layer.extend(layers.values())
        return net


def layer_function(type_name: str):
    """``L.<type_name>(*bottoms, **params)``: one top, a tuple of ``ntop`` tops, or (ntop=0)
    the layer itself."""

    def make_layer(*bottoms, **params):
        fn = Function(type_name, bottoms, params)
        if fn.ntop == 0:
            return fn
        if fn.ntop == 1:
            return fn.tops[0]
        return fn.tops

    make_layer.__name__ = type_name
    make_layer.__qualname__ = f"layers.{type_name}"
    return make_layer


class _Parameters:
    """``P.Pooling.MAX`` -> PoolingParameter.MAX: the enum values of ``<Name>Parameter``."""

    def __getattr__(self, name: str):
        message = getattr(pb, f"{name}Parameter", None)
        if message is None:
            raise AttributeError(f"no message {name}Parameter in the schema")
        return _EnumValues(message)


class _EnumValues:
    def __init__(self, message):
        self._message = message

    def __getattr__(self, value: str):
        try:
            return getattr(self._message, value)
        except AttributeError:
            raise AttributeError(f"{self._message.DESCRIPTOR.name} has no value {value}") from None


class _Layers:
    """pycaffe's ``caffe.layers`` object (``netforge.layers`` itself serves the same way)."""

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return layer_function(name)


params = _Parameters()
layers = _Layers()
