"""CPU speed and memory: netforge vs PyTorch on LeNet, CIFAR-10 quick, AlexNet, ResNet-50,
DenseNet-121.

    .venv/bin/python tools/bench/cpu.py [--nets lenet,cifar10_quick,alexnet,resnet50,densenet121]
        [--modes train,predict] [--threads 2,1] [--rounds 5] [--seconds 1.0] [--no-memory]
        [--netforge DIR] [--recompute-columns | --keep-columns] [--no-runtime-counted]
        [--coretype SkylakeX] [--blas-env unset,environment] [--json FILE]

Rows: a TRAIN step (forward + backward + SGD update with momentum and weight decay: netforge's
``Solver.step(1)``, torch's zero_grad/forward/cross_entropy/backward/SGD.step) and predict (a
TEST-phase forward of the deploy net: ``Net.forward``, torch under ``inference_mode``) of each
net at its bench batch size (tools/bench/nets.py: LeNet 64, CIFAR-10 quick 100, AlexNet 4,
ResNet-50 2, DenseNet-121 2). The torch model is a layer-by-layer translation of netforge's
compiled plan holding copies of the same weights; a check column gives the largest relative
difference of the two outputs (predict) or of the first losses (train, nets without Dropout).

Time: both frameworks run in one process per thread count (OpenBLAS and torch set to the same
number of threads through OPENBLAS_NUM_THREADS/OMP_NUM_THREADS and torch.set_num_threads).
Each round times netforge, then torch: a pause (so that the other library's spinning worker
threads go to sleep), a warm-up, then about ``--seconds`` of single steps; a round scores the
median step. The table shows the median over ``--rounds`` rounds (ms/iter) and the ratio
netforge / torch (< 1: netforge faster). The machine's load average is printed: on a shared
2-core machine every other process steals from both contenders alike, but ratios are the
figure to trust.

"cpu" columns: the median CPU time of a step summed over the process's threads
(``time.process_time``). With one thread it is the work itself, unaffected by other
processes taking turns on the cores; with more threads it also counts spin-waiting.

Memory: each (framework, net, mode) runs alone in a child process, which resets the kernel's
peak-RSS mark (/proc/self/clear_refs) and reads VmHWM afterwards: the exact peak resident
memory, not a sample. netforge: the peak during 3 steps minus the RSS before the net was
built (so: weights, diffs, solver history, activations, workspaces; the build's own
temporaries, freed and trimmed before the steps, are not counted). torch: the child builds
the model from netforge's net, frees netforge's copy, then takes the peak during 3 steps
minus the RSS before them, plus the parameter and input bytes (which it already held).
Both count resident pages only, so memory never touched is not counted for either. Both
children set glibc's mmap threshold to 64 KiB (``fixed_mmap_threshold``), so that freed
memory leaves RSS at once instead of being reused unseen.

Runtimes are loaded before the base, alike, so that neither framework's library code
counts as the net's memory: torch's child imports torch (its kernels, its allocator) before
it takes the base RSS, and netforge's child likewise imports every compiled-kernel module
and starts numba's code generator (llvmlite's JIT) before its base (``load_kernel_runtime``).
numba then still loads each kernel's machine code (from its cache) on the kernel's first
call, some 70 MB for LeNet's dozen kernels, which torch has in its shared library already:
so both children first run one step of the same net at batch 1 and free it (``warm_up``:
netforge's kernels loaded, torch's lazy initialisation done) before the base. The netforge
figure also comes with the runtime counted ("kernel runtime counted" in the --no-time
listing: the base taken before ``load_kernel_runtime`` and no warm-up, as the bench did
before; about +100 MB per process since the numba kernels landed), so both are reported.

``--netforge DIR`` runs another checkout of the package (a copy of ``netforge/`` taken
before a change) to print the before table in the same session. ``--blas-env`` lists the
BLAS settings to time under (tools/bench/blas_env.py): "unset" removes OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE for both contenders (a user's machine), "environment" keeps what this
environment pins; each block of the table names the setting and the BLAS kernels numpy and
torch loaded (threadpoolctl). ``--coretype`` sets
OPENBLAS_CORETYPE for numpy's OpenBLAS (an environment may pin an older kernel family, e.g.
Haswell's AVX2 on an AVX-512 machine; torch picks its own kernels regardless).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blas_env  # tools/bench/, this script's folder

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_NETS = "lenet,cifar10_quick,alexnet,resnet50,densenet121"


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of this process's RSS (VmHWM), Linux >= 4.0."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def release_freed_memory() -> None:
    """gc, then hand glibc's free heap pages back to the kernel (so that RSS drops)."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


# -- building one case ------------------------------------------------------------------------


def predict_options() -> dict:
    """Options this netforge checkout offers for nets loaded only to predict (memory reuse
    between activations that are not alive at the same time), or none for older ones."""
    import inspect

    from netforge.net import Net

    return {"reuse_memory": True} if "reuse_memory" in inspect.signature(Net).parameters else {}


# Solver options of the netforge under test (--recompute-columns, --keep-columns), set by
# main(); a checkout's own default otherwise.
SOLVER_OPTIONS: dict = {}


def solver_options() -> dict:
    """SOLVER_OPTIONS, less those this netforge checkout's Solver does not take."""
    import inspect

    from netforge.train.solver import Solver

    known = inspect.signature(Solver).parameters
    return {k: v for k, v in SOLVER_OPTIONS.items() if k in known}


def netforge_case(net_name: str, mode: str, batch: int):
    """(step function, the Net) for netforge."""
    import numpy as np

    from tools.bench import nets

    if mode == "train":
        solver = nets.make_solver(net_name, batch, **solver_options())

        def step():
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                solver.step(1)
        return step, solver.net
    net = nets.make_predict_net(net_name, batch, **predict_options())

    def forward():
        net.forward()
    return forward, net


def torch_case(nf_net, net_name: str, mode: str):
    """(step function, module, inputs) for torch, translated from netforge's net."""
    from tools.bench import nets, torch_translate

    module = torch_translate.translate(nf_net, training=mode == "train")
    inputs = nets.torch_inputs(nf_net)
    if "label" in inputs:
        inputs["label"] = inputs["label"].long()
    if mode == "train":
        optimizer = nets.torch_optimizer(module)
        return (lambda: nets.torch_train_step(module, optimizer, inputs)), module, inputs
    return (lambda: nets.torch_predict(module, inputs)), module, inputs


def check_case(net_name: str, mode: str, batch: int) -> str:
    """Largest relative difference between the two frameworks' outputs (predict) or first
    losses (train), on the same weights and inputs."""
    import numpy as np
    import torch

    from tools.bench import nets, torch_translate

    if mode == "train":
        solver = nets.make_solver(net_name, batch)
        if any(layer.type == "Dropout" for layer in solver.net.layers):
            return "dropout"
        module = torch_translate.translate(solver.net, training=True)
        inputs = nets.torch_inputs(solver.net)
        inputs["label"] = inputs["label"].long()
        with np.errstate(over="ignore", invalid="ignore"):
            ours = solver.net.forward_range(0, len(solver.net.layers) - 1)
        theirs = float(module(inputs)["loss"])
        return f"{abs(ours - theirs) / max(abs(theirs), 1e-12):.0e}"
    net = nets.make_predict_net(net_name, batch)
    module = torch_translate.translate(net, training=False)
    with torch.inference_mode():
        blobs = module(nets.torch_inputs(net))
    net.forward()
    diffs = [np.abs(net.blobs[o].data - blobs[o].numpy()).max() / max(np.abs(blobs[o].numpy())
             .max(), 1e-12) for o in net.outputs]
    return f"{max(diffs):.0e}"


# -- timing (one child per thread count) --------------------------------------------------


def _round(step, seconds: float) -> tuple[float, float]:
    """Median wall ms and median CPU ms (all the process's threads) of single steps for
    about ``seconds``, after a pause and a warm-up."""
    time.sleep(0.25)  # let the other library's spin-waiting worker threads go to sleep
    start = time.perf_counter()
    step()
    step()
    est = (time.perf_counter() - start) / 2
    iters = max(3, min(50, math.ceil(seconds / max(est, 1e-4))))
    wall, cpu = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def jit_state() -> str:
    """Whether netforge's compiled kernels (numba) are in use in this process."""
    try:
        from netforge.ops import compiled
    except ImportError:  # a checkout from before the compiled kernels
        return "none"
    return "numba" if compiled.enabled() else "off"


def time_cases(args) -> None:
    import logging

    logging.disable(logging.INFO)
    import torch

    from tools.bench import nets

    torch.set_num_threads(args.threads)
    for net_name in args.nets.split(","):
        batch = args.batch or nets.NETS[net_name].batch
        for mode in args.modes.split(","):
            nf_step, nf_net = netforge_case(net_name, mode, batch)
            start = time.perf_counter()
            nf_step()  # the first step: compiles or loads the compiled kernels, first touch
            first_ms = (time.perf_counter() - start) * 1e3
            th_step, _, _ = torch_case(nf_net, net_name, mode)
            nf, th = [], []
            for _ in range(args.rounds):
                nf.append(_round(nf_step, args.seconds))
                th.append(_round(th_step, args.seconds))
            nf_ms, th_ms = [r[0] for r in nf], [r[0] for r in th]
            check = check_case(net_name, mode, batch) if args.threads == args.check_threads \
                else ""
            print(json.dumps({"net": net_name, "mode": mode, "batch": batch,
                              "threads": args.threads, "nf_ms": statistics.median(nf_ms),
                              "torch_ms": statistics.median(th_ms), "nf_rounds": nf_ms,
                              "torch_rounds": th_ms, "check": check,
                              "nf_cpu_ms": statistics.median(r[1] for r in nf),
                              "torch_cpu_ms": statistics.median(r[1] for r in th),
                              "load": os.getloadavg()[0], "first_ms": first_ms,
                              "blas": blas_env.describe(), "jit": jit_state()}), flush=True)
            del nf_step, nf_net, th_step
            gc.collect()


# -- memory (one child per framework and case) ------------------------------------------------


def fixed_mmap_threshold() -> None:
    """Make glibc serve every block of 64 KiB or more with its own mmap and give it back on
    free (no dynamic threshold): freed arrays then leave RSS at once, and one framework's
    freed heap cannot hide the other's allocations (torch's child builds netforge's net
    first, to translate it)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def load_kernel_runtime() -> None:
    """Import netforge's compiled-kernel modules and start numba's code generator (llvmlite's
    JIT engine), as importing torch loads torch's runtime: library code, not the net's
    memory. A checkout without compiled kernels (or without numba) loads nothing."""
    try:
        from netforge.ops import compiled
    except ImportError:
        return
    if not compiled.enabled():
        return
    import pkgutil

    for info in pkgutil.iter_modules(compiled.__path__):
        if info.name != "jit":
            compiled.load(info.name)
    from numba.core.registry import cpu_target

    cpu_target.target_context  # noqa: B018  (builds the codegen: llvmlite initialised)


def warm_up(framework: str, net_name: str, mode: str) -> None:
    """One step of ``net_name`` at batch 1 in ``framework``, then everything freed: the
    runtime's lazily loaded code (numba's kernels, torch's first-call initialisation) is
    in place before the base RSS, and the net's memory is not."""
    step, nf_net = netforge_case(net_name, mode, 1)
    if framework == "netforge":
        step()
    else:
        torch_step, _, _ = torch_case(nf_net, net_name, mode)
        torch_step()
        del torch_step
    del step, nf_net
    release_freed_memory()


def memory_case(args) -> None:
    fixed_mmap_threshold()
    import logging

    logging.disable(logging.INFO)
    import numpy  # noqa: F401  (imports outside the measured window)
    import torch

    import netforge.train.solver  # noqa: F401
    from tools.bench import nets, torch_translate  # noqa: F401

    torch.set_num_threads(args.threads)
    net_name, mode = args.nets, args.modes
    batch = args.batch or nets.NETS[net_name].batch
    if args.framework == "netforge":
        release_freed_memory()
        base_with_runtime = rss_mb()  # the base the bench took before load_kernel_runtime
        if args.runtime_counted:  # as the bench measured before: no preloading
            step, _ = netforge_case(net_name, mode, batch)
            release_freed_memory()
            reset_peak_rss()
            for _ in range(3):
                step()
            print(json.dumps({"mb": peak_rss_mb() - base_with_runtime}))
            return
        load_kernel_runtime()
        warm_up("netforge", net_name, mode)
        base = rss_mb()
        step, _ = netforge_case(net_name, mode, batch)
        release_freed_memory()  # the build's temporaries (fillers) are not the net's
        reset_peak_rss()
        for _ in range(3):
            step()
        print(json.dumps({"mb": peak_rss_mb() - base}))
        return
    warm_up("torch", net_name, mode)
    _, nf_net = netforge_case(net_name, mode, batch)
    module = torch_translate.translate(nf_net, training=mode == "train")
    inputs = nets.torch_inputs(nf_net)
    if "label" in inputs:
        inputs["label"] = inputs["label"].long()
    del nf_net
    release_freed_memory()
    held = sum(t.numel() * t.element_size()
               for t in [*module.parameters(), *inputs.values()]) / 2**20
    # Created before the window: it imports modules; its momentum buffers come with the
    # first step, inside the window.
    optimizer = nets.torch_optimizer(module) if mode == "train" else None
    release_freed_memory()
    base = rss_mb()
    reset_peak_rss()
    if mode == "train":
        for _ in range(3):
            nets.torch_train_step(module, optimizer, inputs)
    else:
        for _ in range(3):
            nets.torch_predict(module, inputs)
    print(json.dumps({"mb": held + peak_rss_mb() - base}))


# -- the parent: children, table ------------------------------------------------------------


def child(args, extra: list[str], threads: int, other_netforge: bool = True,
          setting: str = "unset") -> list[dict]:
    """Run this script as a child with ``extra`` arguments and ``threads`` threads under the
    BLAS ``setting`` (tools/bench/blas_env.py); with ``--netforge`` the child imports that
    checkout unless ``other_netforge`` is False."""
    env = blas_env.environment(setting)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    if args.coretype:
        env["OPENBLAS_CORETYPE"] = args.coretype
    # One numba cache for the whole run, empty at its start: the first child's first step
    # includes compiling the kernels, later ones load them (the "1st ms" column).
    env["NUMBA_CACHE_DIR"] = args.jit_cache
    paths = [str(ROOT)]
    if args.netforge and other_netforge:
        paths.insert(0, str(Path(args.netforge).resolve()))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(threads),
           "--rounds", str(args.rounds), "--seconds", str(args.seconds),
           "--check-threads", str(args.check_threads), *extra]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    if args.recompute_columns:
        cmd += ["--recompute-columns"]
    if args.keep_columns:
        cmd += ["--keep-columns"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"child {' '.join(extra)} failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default=DEFAULT_NETS)
    parser.add_argument("--modes", default="train,predict")
    parser.add_argument("--threads", default="2,1")
    parser.add_argument("--batch", type=int, default=None, help="override every net's batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per round")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-time", action="store_true", help="memory columns only")
    parser.add_argument("--netforge", default=None, help="a folder holding another netforge/")
    parser.add_argument("--coretype", default=None,
                        help="OPENBLAS_CORETYPE for the children (default: the environment's)")
    parser.add_argument("--blas-env", default="unset,environment",
                        help="BLAS settings to time under, in order (tools/bench/blas_env.py)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--no-runtime-counted", action="store_true",
                        help="skip the netforge figure with its kernel runtime counted")
    parser.add_argument("--runtime-counted", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--recompute-columns", action="store_true",
                        help="netforge's Solver(recompute_columns=True): convolutions rebuild "
                             "their columns in backward (this checkout's default)")
    parser.add_argument("--keep-columns", action="store_true",
                        help="netforge's Solver(recompute_columns=False): convolutions keep "
                             "forward's columns for backward")
    parser.add_argument("--jit-cache", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["time", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--framework", choices=["netforge", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--check-threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.recompute_columns or args.keep_columns:
        SOLVER_OPTIONS["recompute_columns"] = not args.keep_columns
    if args.child:  # PYTHONPATH (set by the parent) puts the netforge under test first
        args.threads = int(args.threads)
        (time_cases if args.child == "time" else memory_case)(args)
        return

    thread_counts = [int(t) for t in args.threads.split(",")]
    args.check_threads = thread_counts[0]
    settings = [s for s in args.blas_env.split(",") if s]
    jit_cache = tempfile.TemporaryDirectory(prefix="netforge-bench-jit-")
    args.jit_cache = jit_cache.name
    rows = []
    for setting in [] if args.no_time else settings:
        for threads in thread_counts:
            for row in child(args, ["--child", "time", "--nets", args.nets, "--modes",
                                    args.modes], threads, setting=setting):
                row["setting"] = blas_env.label(setting, blas_env.environment(setting))
                rows.append(row)
    memory, runtime_counted = {}, {}
    if not args.no_memory:
        for net_name in args.nets.split(","):
            for mode in args.modes.split(","):
                for fw in ("netforge", "torch"):
                    # torch's figure must not depend on the netforge it translates from
                    result = child(args, ["--child", "memory", "--framework", fw, "--nets",
                                          net_name, "--modes", mode], thread_counts[0],
                                   other_netforge=fw == "netforge", setting=settings[0])
                    memory[(net_name, mode, fw)] = result[0]["mb"]
                if not args.no_runtime_counted:  # the figure as the bench took it before
                    result = child(args, ["--child", "memory", "--framework", "netforge",
                                          "--runtime-counted", "--nets", net_name,
                                          "--modes", mode], thread_counts[0],
                                   setting=settings[0])
                    runtime_counted[(net_name, mode)] = result[0]["mb"]
    import torch

    source = args.netforge or "this checkout"
    print(f"netforge ({source}) vs torch {torch.__version__}, CPU float32; median of "
          f"{args.rounds} rounds of ~{args.seconds:g} s; peak RSS in MB (see --help); "
          f"1st ms: netforge's first step (the run's first child compiles the kernels into "
          f"an empty numba cache, later children load them); all ratios from this one run")
    header = (f"{'net':<14} {'mode':<8} {'batch':>5} {'thr':>3} {'netforge ms':>11} "
              f"{'torch ms':>9} {'ratio':>6} {'nf cpu':>7} {'th cpu':>7} {'ratio':>6} "
              f"{'nf MB':>7} {'torch MB':>8} {'mem':>5} {'check':>8} {'load':>5} "
              f"{'1st ms':>7}")
    shown = None
    for r in rows:
        if (r["setting"], r["threads"]) != shown:
            shown = (r["setting"], r["threads"])
            print(f"\nBLAS setting {r['setting']}, {r['threads']} thread(s); kernels: "
                  f"netforge compiled={r['jit']}; BLAS: {r['blas']}")
            print(header)
            print("-" * len(header))
        nf_mb = memory.get((r["net"], r["mode"], "netforge"))
        th_mb = memory.get((r["net"], r["mode"], "torch"))
        mem = (f"{nf_mb:7.1f} {th_mb:8.1f} {nf_mb / th_mb:5.2f}"
               if nf_mb is not None and r["threads"] == thread_counts[0]
               and r["setting"].startswith(settings[0]) else f"{'':23}")
        print(f"{r['net']:<14} {r['mode']:<8} {r['batch']:>5} {r['threads']:>3} "
              f"{r['nf_ms']:>11.2f} {r['torch_ms']:>9.2f} {r['nf_ms'] / r['torch_ms']:>6.2f} "
              f"{r['nf_cpu_ms']:>7.2f} {r['torch_cpu_ms']:>7.2f} "
              f"{r['nf_cpu_ms'] / r['torch_cpu_ms']:>6.2f} {mem} {r['check']:>8} "
              f"{r['load']:>5.1f} {r['first_ms']:>7.0f}")
    if args.no_time:
        for (net_name, mode, fw), mb in memory.items():
            with_runtime = runtime_counted.get((net_name, mode)) if fw == "netforge" else None
            note = (f"   (nf+rt MB, kernel runtime counted: {with_runtime:.1f})"
                    if with_runtime is not None else "")
            print(f"{net_name:<14} {mode:<8} {fw:<9} peak {mb:8.1f} MB{note}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rows": rows, "memory": {"/".join(k): v for k, v in memory.items()},
             "netforge_with_runtime": {"/".join(k): v for k, v in runtime_counted.items()}},
            indent=1))


if __name__ == "__main__":
    main()
