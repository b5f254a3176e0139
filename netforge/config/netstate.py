"""NetState filtering: which layers a phase, level and stages keep (Caffe's NetStateRule)."""

from __future__ import annotations

from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError

PHASES = {"TRAIN": pb.TRAIN, "TEST": pb.TEST}
PHASE_NAMES = {pb.TRAIN: "TRAIN", pb.TEST: "TEST"}


def make_state(phase: str = "TEST", level: int = 0, stages=()) -> pb.NetState:
    if phase not in PHASES:
        raise ConfigError(f'phase must be TRAIN or TEST, got "{phase}"')
    state = pb.NetState(phase=PHASES[phase], level=level)
    state.stage.extend(s for s in stages if s)
    return state


def state_meets_rule(state: pb.NetState, rule: pb.NetStateRule) -> bool:
    """Caffe's NetStateRule match: phase, level range, all stages, none of not_stages."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def filter_net(net: pb.NetParameter, state: pb.NetState, source: str = "net") -> pb.NetParameter:
    """A copy of ``net`` keeping only the layers whose include/exclude rules admit ``state``."""
    kept = pb.NetParameter()
    kept.CopyFrom(net)
    del kept.layer[:]
    for layer in net.layer:
        if layer.include and layer.exclude:
            raise ConfigError(
                f'{source}: layer "{layer.name}" has both include and exclude rules; '
                "specify one or the other"
            )
        if layer.include:
            keep = any(state_meets_rule(state, rule) for rule in layer.include)
        else:
            keep = not any(state_meets_rule(state, rule) for rule in layer.exclude)
        if keep:
            kept.layer.add().CopyFrom(layer)
    kept.state.CopyFrom(state)
    return kept
