"""One CUDA graph per training step: eager warm-up, capture once, replay every iteration.

Small nets are launch-bound on a GPU (~10 µs of host time per kernel, ~40 kernels a LeNet
step); replaying a captured graph costs one launch. ``StepGraph`` wraps a step function:

    graph = StepGraph(step, stream=compute_stream)     # nothing captured yet
    for batch in batches:
        stager.stage(batch)      # pinned host -> static device buffers, on a copy stream
        graph.run()              # warm-up eagerly, then capture once, then replay

Rules the step must follow (gpu-notes §2.3-2.4): every buffer it touches exists before the
capture and lives as long as the graph (the plan owns them); no host reads (``float(x)``,
``.item()``), no H2D/D2H copies, no ``cupy.matmul``/``cupy.random`` (CuPy refuses cuBLAS and
cuRAND during capture) — cuDNN and our own kernels only; scalars that change per iteration
(the learning rate) are read from device memory. Temporary allocations made during capture
come from a private memory pool that nothing else uses, so no replay reads a block that
eager code has reused.

If capture fails (a step that breaks a rule above), ``StepGraph`` ends the capture, logs one
warning naming the error, and keeps running the step eagerly: results stay right, only the
speed-up is lost. ``enabled=False`` (``netforge train --no-graph``, or the solver's
``cuda_graph: false``) never captures.

The stream/graph objects are duck-typed (CuPy's ``Stream.begin_capture/end_capture`` and
``Graph.launch``), so the control flow is tested on the CPU with fakes.

Status: the control flow is tested on the CPU; capture and replay have not run on a GPU yet.
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger("netforge")


def wanted(solver_param, no_graph: bool, mode: str) -> bool:
    """Capture the step? Only on the GPU, unless --no-graph or ``cuda_graph: false``."""
    return mode == "gpu" and not no_graph and bool(solver_param.cuda_graph)


class StepGraph:
    """Runs ``step()`` eagerly ``warmup`` times on ``stream``, then captures and replays it.

    Args:
        step: the function to capture (no arguments; its result is ignored).
        stream: a non-default stream (CuPy refuses to capture the legacy null stream).
        warmup: eager iterations before capture (compiles kernels, builds cuDNN plans,
            sizes workspaces).
        enabled: False runs ``step`` eagerly forever.
        capture_allocator: a context manager factory routing allocations made during capture
            to a private pool (``cupy.cuda.using_allocator(pool.malloc)``); None for none.
    """

    def __init__(self, step, *, stream, warmup: int = 1, enabled: bool = True,
                 capture_allocator=None):
        if warmup < 1 and enabled:
            raise ValueError("a CUDA-graph step needs at least one eager warm-up iteration")
        self.step = step
        self.stream = stream
        self.warmup = warmup
        self.enabled = enabled
        self.capture_allocator = capture_allocator
        self.graph = None
        self.eager_runs = 0
        self.replays = 0
        self.failure: str | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def run(self) -> None:
        """One iteration."""
        if self.graph is not None:
            self.graph.launch(self.stream)
            self.replays += 1
            return
        if not self.enabled or self.failure is not None or self.eager_runs < self.warmup:
            with self.stream:
                self.step()
            self.eager_runs += 1
            return
        if self._capture():
            self.graph.launch(self.stream)  # capture records only: this replay does the work
            self.replays += 1
        else:
            with self.stream:
                self.step()
            self.eager_runs += 1

    def _capture(self) -> bool:
        allocator = self.capture_allocator() if self.capture_allocator else contextlib.nullcontext()
        try:
            with self.stream, allocator:
                self.stream.begin_capture()
                try:
                    self.step()
                finally:
                    graph = self.stream.end_capture()
        except Exception as exc:  # any broken rule: keep training, eagerly
            self.failure = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA-graph capture of the training step failed (%s); running the "
                        "step eagerly (use --no-graph to skip the attempt)", self.failure)
            return False
        self.graph = graph
        return True


class InputStager:
    """Static device input buffers fed from pinned host memory on a copy stream.

    ``stage(batch)`` waits until the previous copy out of the pinned buffer finished, writes
    the host batch into it, starts the H2D copy on ``copy_stream`` and makes the compute
    stream wait for it — so the copy overlaps the previous replay and the graph always reads
    the same device addresses.

    ``pinned_empty(shape, dtype)`` returns page-locked host memory (``cupyx.empty_pinned``);
    streams follow CuPy's interface (``record()`` → event, ``wait_event``).
    """

    def __init__(self, device_buffers: dict, *, compute_stream, copy_stream, pinned_empty):
        self.device = device_buffers
        self.compute_stream = compute_stream
        self.copy_stream = copy_stream
        self.pinned = {name: pinned_empty(a.shape, a.dtype) for name, a in device_buffers.items()}
        self.done = None  # event: the last copy out of the pinned buffers finished

    def stage(self, batch: dict) -> None:
        if set(batch) != set(self.device):
            raise KeyError(f"batch has {sorted(batch)}, the graph's inputs are "
                           f"{sorted(self.device)}")
        if self.done is not None:
            self.done.synchronize()
        for name, values in batch.items():
            self.pinned[name][...] = values
        for name, buffer in self.device.items():
            buffer.set(self.pinned[name], stream=self.copy_stream)
        self.done = self.copy_stream.record()
        self.compute_stream.wait_event(self.done)


def cupy_step_graph(step, *, enabled: bool = True, warmup: int = 1) -> StepGraph:
    """A StepGraph on a fresh non-blocking CuPy stream with a private capture pool."""
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    pool = cupy.cuda.MemoryPool()
    return StepGraph(step, stream=stream, warmup=warmup, enabled=enabled,
                     capture_allocator=lambda: cupy.cuda.using_allocator(pool.malloc))


def cupy_input_stager(device_buffers: dict, compute_stream) -> InputStager:
    import cupy
    import cupyx

    return InputStager(device_buffers, compute_stream=compute_stream,
                       copy_stream=cupy.cuda.Stream(non_blocking=True),
                       pinned_empty=cupyx.empty_pinned)
