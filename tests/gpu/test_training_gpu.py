"""End to end on the GPU: LeNet's losses track the CPU run's; the step captured as a CUDA
graph gives the same weights as the eager step."""

from __future__ import annotations

import numpy as np

from netforge import backend, config
from netforge import netforge_pb2 as pb
from netforge.backend import to_host
from netforge.train import cuda_graph
from netforge.train.solver import Solver

NET = """
name: "LeNetSynthetic"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } shape { dim: 64 }
                           data_filler { type: "gaussian" std: 1 }
                           data_filler { type: "constant" value: 3 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 50 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def _solver(seed=3):
    sp = pb.SolverParameter(base_lr=0.01, momentum=0.9, lr_policy="fixed", max_iter=20,
                            display=0, random_seed=seed, snapshot_after_train=False)
    config.parse_text(NET, sp.net_param, "lenet.prototxt")
    return Solver(sp, metrics=False)


def _losses(solver, iters):
    out = []
    for _ in range(iters):
        solver.net.clear_param_diffs()
        out.append(solver.net.forward_backward())
        solver.apply_update()
        solver.iter += 1
    return out


def test_lenet_losses_track_the_cpu_run(cupy):
    backend.set_mode_cpu()
    cpu = _solver()
    backend.set_mode_gpu()
    gpu = _solver()
    # the same starting weights and the same batches: copy the CPU net's state over
    for name, blob in cpu.net.blobs.items():
        gpu.net.blobs[name].data[...] = cupy.asarray(blob.data)
    for p_cpu, p_gpu in zip(cpu.net.learnable_params, gpu.net.learnable_params, strict=True):
        p_gpu.blob.data[...] = cupy.asarray(p_cpu.blob.data)
    want, got = _losses(cpu, 10), _losses(gpu, 10)
    np.testing.assert_allclose(got, want, rtol=2e-3)


def test_graph_on_and_off_give_the_same_weights(cupy):
    runs = []
    for enabled in (False, True):
        solver = _solver(seed=11)
        net = solver.net

        def step(net=net, solver=solver):
            net.clear_param_diffs()
            net.forward_backward()
            solver.apply_update()

        graph = cuda_graph.cupy_step_graph(step, enabled=enabled)
        for _ in range(6):
            graph.run()
        cupy.cuda.Device().synchronize()
        runs.append(([to_host(p.blob.data) for p in net.learnable_params], graph))
    (eager, _), (graphed, graph) = runs
    assert graph.captured, graph.failure  # fails until the step has no host reads
    for a, b in zip(eager, graphed, strict=True):
        np.testing.assert_array_equal(a, b)
