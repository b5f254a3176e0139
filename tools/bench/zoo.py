"""Model-zoo forward+backward, netforge vs PyTorch CPU, on the same nets with the same weights.

For each zoo deploy net (configs/zoo/<net>_deploy.prototxt) at a small batch:
  * netforge builds the net (force_backward, random He-scaled weights);
  * the PyTorch model is tools/bench/torch_translate.py's layer-by-layer translation of
    netforge's compiled plan in eval mode (BatchNorm with the stored statistics, Dropout the
    identity), holding copies of netforge's weights — so both time the same net. A first
    pass checks that both give the same outputs and input gradients before anything is timed.
  * the check runs in float64 (see check_equivalence); the timed runs in float32.
  * one fwd+bwd = forward a random batch, seed every output with a random gradient, backward
    to the input (netforge: net.forward/net.backward; torch: autograd with x.requires_grad).

Each measurement runs in its own child process (one net, one framework) with the same
thread count, so that memory figures do not mix. Reported per net:
  ms         median wall time of one fwd+bwd over --iters timed iterations after a warm-up
  ratio      netforge ms / torch ms
  nf traced  netforge's peak of traced memory (tracemalloc: numpy reports its buffers)
             during the first fwd+bwd after the build: params, diffs, activations and
             workspaces it holds, plus anything a step allocates (build-time filler
             temporaries excluded)
  RSS        peak resident set size (sampled every 0.5 ms from a thread) during the first
             fwd+bwd, minus the RSS before the model existed: for netforge, from before
             the net is built; for torch, the parameter bytes plus the growth during the
             first fwd+bwd (parameter gradients and saved activations). torch's allocator
             is invisible to tracemalloc, so RSS is the common yardstick
  mem ratio  netforge RSS / torch RSS

    .venv/bin/python tools/bench/zoo.py [--nets alexnet,squeezenet1.1,resnet50]
                                        [--batch 2] [--iters 5] [--threads 2]

PyTorch is a benchmark oracle only (pip install torch==2.13.0); netforge never imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: tools.bench.* and netforge importable

from tools.bench.torch_translate import translate  # noqa: E402

ZOO = ROOT / "configs" / "zoo"
ALL_NETS = ["alexnet", "caffenet", "squeezenet1.1", "googlenet", "resnet50", "densenet121",
            "vgg16"]


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- netforge ------------------------------------------------------------------------------


def build_netforge(name: str, batch: int, seed: int = 0, dtype: str = "float32"):
    import numpy as np

    from netforge import config
    from netforge.inspect.summary import set_batch_size
    from netforge.net import Net

    param = config.load_net_param(ZOO / f"{name}_deploy.prototxt")
    set_batch_size(param, batch)
    param.force_backward = True
    net = Net(param, "test", seed=seed, dtype=np.dtype(dtype))
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        blobs = layer.blobs
        if layer.type in ("Convolution", "InnerProduct"):
            fan_in = blobs[0].count // blobs[0].shape[0]
            blobs[0].data[...] = rng.standard_normal(blobs[0].shape, np.float32)
            blobs[0].data *= np.sqrt(2.0 / fan_in)
            for bias in blobs[1:]:
                bias.data[...] = rng.normal(0, 0.01, bias.shape)
        elif layer.type == "Scale":
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].shape)
            for bias in blobs[1:]:
                bias.data[...] = rng.normal(0, 0.1, bias.shape)
    # BatchNorm statistics near those of a random input keep activations O(1); arbitrary
    # ones let ResNet's logits reach 1e5, saturating the softmax (all gradients 0).
    if not any(layer.type == "BatchNorm" for layer in net.layers):
        return net
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    for step in net.plan.steps:
        if step.layer.type == "BatchNorm":
            x = step.bottoms[0].data
            axes = (0, *range(2, x.ndim))
            var = np.maximum(x.var(axis=axes), 1e-2)
            step.layer.blobs[0].data[...] = x.mean(axis=axes)
            step.layer.blobs[1].data[...] = var * rng.uniform(0.5, 1.5, var.shape)
            step.layer.blobs[2].data[...] = 1.0
        step.layer.forward(step.bottoms, step.tops)
    return net


def netforge_step(net, x, grads):
    net.forward(data=x)
    for name, g in grads.items():
        net.blobs[name].diff[...] = g
    net.backward()


def inputs_for(net, seed: int = 1):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(net.blobs["data"].shape).astype(np.float32)
    grads = {o: rng.standard_normal(net.blobs[o].shape).astype(np.float32) for o in net.outputs}
    return x, grads


# -- PyTorch (the translation is tools/bench/torch_translate.py) ----------------------------


def torch_step(model, x, grads):
    import torch

    x = x.detach().requires_grad_(True)
    blobs = model(x)
    outs = [blobs[name] for name in grads]
    torch.autograd.backward(outs, [grads[name] for name in grads])
    return blobs, x.grad


# -- one measurement (child process) -------------------------------------------------------


def median_ms(step, iters: int) -> float:
    step()  # warm-up: first-touch of workspaces, caches
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


class PeakRSS:
    """Samples the resident set size from a thread while the block runs (numpy and torch
    release the GIL in their kernels, so the sampler sees the peaks between them)."""

    def __init__(self, period_s: float = 0.0005):
        self.period_s = period_s
        self.peak = 0.0

    def __enter__(self):
        import threading

        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.period_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def measure(framework: str, name: str, batch: int, iters: int, threads: int) -> dict:
    if framework == "netforge":
        import tracemalloc

        import netforge.net  # noqa: F401  (imports outside the measured window)

        base = rss_mb()
        tracemalloc.start()
        net = build_netforge(name, batch)
        x, grads = inputs_for(net)
        # Build-time temporaries (fillers) are freed by now; like torch's figure, measure
        # what is held plus what the first fwd+bwd adds.
        tracemalloc.reset_peak()
        with PeakRSS() as sampler:
            netforge_step(net, x, grads)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        ms = median_ms(lambda: netforge_step(net, x, grads), iters)
        return {"ms": ms, "traced_mb": traced_peak / 2**20, "rss_mb": sampler.peak - base}

    import gc

    import torch

    torch.set_num_threads(threads)
    source = build_netforge(name, batch)  # the source of structure and weights
    x_np, grads_np = inputs_for(source)
    model = translate(source)
    del source
    gc.collect()
    x = torch.from_numpy(x_np)
    grads = {k: torch.from_numpy(v) for k, v in grads_np.items()}
    # The parameters already exist (copied from netforge's net, which is freed now); the
    # first step adds their gradients and the activations autograd keeps for backward.
    params_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    base = rss_mb()
    with PeakRSS() as sampler:
        torch_step(model, x, grads)
    ms = median_ms(lambda: torch_step(model, x, grads), iters)
    return {"ms": ms, "rss_mb": params_mb + sampler.peak - base}


def check_equivalence(name: str, batch: int) -> tuple[float, float]:
    """Max relative differences (outputs, input gradient) between netforge and the
    translation after one fwd+bwd on the same batch, both in float64: in float32 the input
    gradient of a 50-layer net differs by up to a few percent between any two correct
    implementations (summation order), which would hide a real mismatch."""
    import numpy as np
    import torch

    net = build_netforge(name, batch, dtype="float64")
    model = translate(net)
    x, grads = inputs_for(net)
    x, grads = x.astype(np.float64), {k: v.astype(np.float64) for k, v in grads.items()}
    netforge_step(net, x, grads)
    blobs, x_grad = torch_step(model, torch.from_numpy(x),
                               {k: torch.from_numpy(v) for k, v in grads.items()})

    def rel(a, b):
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))

    out = max(rel(net.blobs[o].data, blobs[o].detach().numpy()) for o in net.outputs)
    return out, rel(net.blobs["data"].diff, x_grad.numpy())


def run_child(framework: str, name: str, args) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    cmd = [sys.executable, __file__, "--child", framework, "--nets", name,
           "--batch", str(args.batch), "--iters", str(args.iters),
           "--threads", str(args.threads)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{framework} {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="alexnet,squeezenet1.1,resnet50",
                        help=f"comma-separated, from {', '.join(ALL_NETS)} (or 'all')")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2,
                        help="BLAS/OpenMP threads for both (use 1 on a loaded machine: "
                        "spinning OpenMP barriers make 2-thread timings erratic there)")
    parser.add_argument("--no-check", action="store_true", help="skip the equivalence check")
    parser.add_argument("--child", choices=["netforge", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    nets = ALL_NETS if args.nets == "all" else args.nets.split(",")

    if args.child:
        import logging

        logging.disable(logging.INFO)
        print(json.dumps(measure(args.child, nets[0], args.batch, args.iters, args.threads)))
        return

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    import logging

    logging.disable(logging.INFO)
    import torch

    torch.set_num_threads(args.threads)
    print(f"zoo fwd+bwd, batch {args.batch}, {args.threads} thread(s), median of {args.iters} "
          f"after a warm-up; torch {torch.__version__}")
    header = (f"{'net':<14} {'netforge ms':>11} {'torch ms':>9} {'ratio':>6} "
              f"{'nf traced MB':>12} {'nf RSS MB':>9} {'torch RSS MB':>12} {'mem ratio':>9} "
              f"{'check (float64)':>20}")
    print(header)
    print("-" * len(header))
    for name in nets:
        check = "skipped"
        if not args.no_check:
            out_diff, grad_diff = check_equivalence(name, 1)
            check = f"out {out_diff:.0e} dx {grad_diff:.0e}"
        nf = run_child("netforge", name, args)
        th = run_child("torch", name, args)
        print(f"{name:<14} {nf['ms']:>11.1f} {th['ms']:>9.1f} {nf['ms'] / th['ms']:>6.2f} "
              f"{nf['traced_mb']:>12.0f} {nf['rss_mb']:>9.0f} {th['rss_mb']:>12.0f} "
              f"{nf['rss_mb'] / th['rss_mb']:>9.1f} {check:>20}", flush=True)


if __name__ == "__main__":
    main()
