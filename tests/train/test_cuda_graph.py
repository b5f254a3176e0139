"""The CUDA-graph wrapper's control flow with fake streams and graphs (no GPU needed):
warm-up, one capture, replays, the eager fallback when capture fails, --no-graph, and the
pinned-memory input stager's ordering."""

from __future__ import annotations

import numpy as np
import pytest

from netforge import netforge_pb2 as pb
from netforge.train import cuda_graph


class FakeGraph:
    def __init__(self, recorded, log):
        self.recorded, self.log = list(recorded), log

    def launch(self, stream):
        self.log.append(("launch", stream.name))
        for op in self.recorded:  # a replay re-runs what was recorded
            op()


class FakeStream:
    """Records what runs on it; during capture, ops are recorded instead of executed."""

    def __init__(self, log, name="compute"):
        self.log, self.name = log, name
        self.capturing = False
        self.recorded = []
        self.current = 0

    def __enter__(self):
        self.current += 1
        return self

    def __exit__(self, *exc):
        self.current -= 1

    def begin_capture(self):
        assert self.current, "capture must begin on the current stream"
        self.capturing = True
        self.log.append("begin_capture")

    def end_capture(self):
        self.capturing = False
        self.log.append("end_capture")
        graph, self.recorded = FakeGraph(self.recorded, self.log), []
        return graph

    def submit(self, op):
        if self.capturing:
            self.recorded.append(op)
        else:
            op()

    # InputStager's interface
    def record(self):
        event = FakeEvent(self.log, self.name)
        self.log.append(("record", self.name))
        return event

    def wait_event(self, event):
        self.log.append(("wait", self.name, event.stream_name))


class FakeEvent:
    def __init__(self, log, stream_name):
        self.log, self.stream_name = log, stream_name

    def synchronize(self):
        self.log.append(("sync", self.stream_name))


def _counting_step(stream, counter):
    def step():
        assert stream.current, "the step must run with the graph's stream current"
        stream.submit(lambda: counter.__setitem__(0, counter[0] + 1))
    return step


def test_warmup_then_one_capture_then_replays():
    log = []
    stream = FakeStream(log)
    counter = [0]
    graph = cuda_graph.StepGraph(_counting_step(stream, counter), stream=stream, warmup=2)
    for _ in range(5):
        graph.run()
    assert counter[0] == 5  # every iteration did the work exactly once
    assert graph.eager_runs == 2 and graph.replays == 3 and graph.captured
    assert log.count("begin_capture") == 1 and log.count("end_capture") == 1
    assert log.count(("launch", "compute")) == 3


def test_capture_failure_ends_capture_and_falls_back_to_eager(caplog):
    log = []
    stream = FakeStream(log)
    counter = [0]
    calls = [0]

    def step():
        calls[0] += 1
        if stream.capturing:
            raise NotImplementedError("calling cuBLAS API during stream capture")
        counter[0] += 1

    graph = cuda_graph.StepGraph(step, stream=stream, warmup=1)
    with caplog.at_level("WARNING", logger="netforge"):
        for _ in range(4):
            graph.run()
    assert counter[0] == 4 and not graph.captured
    assert "end_capture" in log and not stream.capturing  # capture closed despite the error
    assert "NotImplementedError: calling cuBLAS" in graph.failure
    assert "running the step eagerly" in caplog.text
    assert log.count("begin_capture") == 1  # never retried


def test_disabled_never_captures_and_capture_allocator_is_entered():
    log = []
    stream = FakeStream(log)
    counter = [0]
    off = cuda_graph.StepGraph(_counting_step(stream, counter), stream=stream, enabled=False)
    for _ in range(3):
        off.run()
    assert counter[0] == 3 and "begin_capture" not in log

    entered = []

    class Pool:
        def __enter__(self):
            entered.append("in")

        def __exit__(self, *exc):
            entered.append("out")

    on = cuda_graph.StepGraph(_counting_step(stream, counter), stream=stream,
                              capture_allocator=Pool)
    on.run()
    on.run()
    assert entered == ["in", "out"] and on.captured


def test_zero_warmup_is_refused():
    with pytest.raises(ValueError, match="warm-up"):
        cuda_graph.StepGraph(lambda: None, stream=FakeStream([]), warmup=0)


def test_wanted_follows_mode_flag_and_solver_field():
    sp = pb.SolverParameter()
    assert cuda_graph.wanted(sp, False, "gpu") is True
    assert cuda_graph.wanted(sp, True, "gpu") is False
    assert cuda_graph.wanted(sp, False, "cpu") is False
    sp.cuda_graph = False
    assert cuda_graph.wanted(sp, False, "gpu") is False


class FakeDeviceBuffer:
    def __init__(self, shape, dtype, log):
        self.shape, self.dtype, self.log = shape, dtype, log
        self.values = np.zeros(shape, dtype)

    def set(self, host, stream):
        self.log.append(("h2d", stream.name))
        self.values[...] = host


def test_input_stager_copies_on_the_copy_stream_and_orders_the_compute_stream():
    log = []
    compute, copy = FakeStream(log, "compute"), FakeStream(log, "copy")
    buffers = {"data": FakeDeviceBuffer((2, 3), np.float32, log)}
    stager = cuda_graph.InputStager(buffers, compute_stream=compute, copy_stream=copy,
                                    pinned_empty=lambda s, d: np.empty(s, d))
    first, second = np.arange(6.0).reshape(2, 3), -np.arange(6.0).reshape(2, 3)
    stager.stage({"data": first})
    np.testing.assert_array_equal(buffers["data"].values, first)
    stager.stage({"data": second})
    np.testing.assert_array_equal(buffers["data"].values, second)
    assert log == [("h2d", "copy"), ("record", "copy"), ("wait", "compute", "copy"),
                   ("sync", "copy"),  # the pinned buffer is reused only after its last copy
                   ("h2d", "copy"), ("record", "copy"), ("wait", "compute", "copy")]
    with pytest.raises(KeyError, match="graph's inputs"):
        stager.stage({"label": first})
