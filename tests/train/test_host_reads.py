"""A training iteration reads nothing back from the compute device except when the solver
displays, tests, snapshots or returns: counted on a stand-in device (tests/device_shim.py)
whose arrays record every host conversion, with the code that asked for it."""

from __future__ import annotations

import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.train.solver import Solver
from tests import device_shim
from tests.train.test_solver import NET

# NET (DummyData, InnerProduct, ReLU, Dropout, SoftmaxWithLoss) plus an Accuracy output and
# a Euclidean loss on a second head, so more than one loss top is summed.
WIDE_NET = NET + """
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" }
layer { name: "ip3" type: "InnerProduct" bottom: "ip1" top: "ip3"
        inner_product_param { num_output: 1 weight_filler { type: "xavier" } } }
layer { name: "l2" type: "EuclideanLoss" bottom: "ip3" bottom: "label" top: "l2"
        loss_weight: 0.1 }
"""

RULES = ['type: "SGD" momentum: 0.9 clip_gradients: 0.5 iter_size: 2',
         'type: "Adam" momentum: 0.9 momentum2: 0.999 weight_decay: 0.001']


def _solver(tmp_path, rule: str, display: int) -> Solver:
    text = (f'{rule} base_lr: 0.01 lr_policy: "fixed" max_iter: 100 random_seed: 3 '
            f'display: {display} snapshot_prefix: "{tmp_path}/snap"')
    sp = config.parse_text(text, pb.SolverParameter())
    sp.train_net_param.CopyFrom(config.parse_text(WIDE_NET, pb.NetParameter()))
    return Solver(sp, metrics=False)


def _reads_per_iteration(solver, reads) -> list[list[tuple[str, str]]]:
    per_iteration: list[list[tuple[str, str]]] = []
    seen = [0]

    def close_iteration():
        per_iteration.append(reads.events[seen[0]:])
        seen[0] = len(reads.events)

    solver.add_callback(on_end=close_iteration)
    return per_iteration


@pytest.mark.parametrize("rule", RULES, ids=["sgd-clip-itersize", "adam-decay"])
def test_iterations_between_displays_read_nothing_back(tmp_path, rule):
    with device_shim.device() as reads:
        solver = _solver(tmp_path, rule, display=3)
        assert type(solver.net.blobs["ip1"].data) is device_shim.DeviceArray  # on the shim
        reads.clear()  # building the net may read; the iterations may not
        per_iteration = _reads_per_iteration(solver, reads)
        solver.step(7)
        end_of_step = reads.events[sum(len(r) for r in per_iteration):]
    assert len(per_iteration) == 7
    for it, events in enumerate(per_iteration):
        if it % 3:
            assert events == [], f"iteration {it} read {events}"
        else:  # a display: the loss, the outputs, the divergence flag, the clipping norm
            assert events, f"display iteration {it} read nothing?"
    assert [what for what, _ in end_of_step] == ["get"]  # the divergence flag, once
    assert "raise_if_diverged" in end_of_step[0][1]


def test_without_display_a_step_reads_only_the_divergence_flag_at_its_end(tmp_path):
    with device_shim.device() as reads:
        solver = _solver(tmp_path, RULES[0], display=0)
        reads.clear()
        solver.step(5)
        events = list(reads.events)
        loss = solver.smoothed_loss  # asking for it is a read, and gives a number
    assert len(events) == 1 and "raise_if_diverged" in events[0][1], events
    assert isinstance(loss, float) and loss > 0


def test_the_shim_sees_the_reads_it_claims_to():
    xp = device_shim.module
    with device_shim.device() as reads:
        a = xp.ones((2, 3), dtype="float32")
        total = a.sum()  # stays on the "device"
        assert reads.events == []
        assert float(total) == 6.0 and int(a.max()) == 1 and bool(a.all())
        assert a[0, 0].item() == 1.0 and a.tolist()[1] == [1.0, 1.0, 1.0]
        f"{total:.1f}"
    assert [what for what, _ in reads.events] == ["float", "int", "bool", "item", "tolist",
                                                 "format"]
