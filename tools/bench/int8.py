"""onnxruntime int8 (QDQ) vs float, LeNet and SqueezeNet 1.1, in one run on the same inputs.

For each net (LeNet: configs/lenet.prototxt; SqueezeNet 1.1: configs/zoo/squeezenet1.1_deploy
.prototxt), with random He-scaled weights from tools/bench/zoo.py's builder (speed does not
depend on the values; accuracy is `netforge compress --int8`'s business, on trained weights):
  * the float model: netforge's ONNX export of the net (netforge.deploy.onnx_export);
  * the int8 model: netforge.deploy.compress.int8.quantize_qdq of that file, exactly what
    `netforge compress --int8` writes: onnxruntime's static quantizer, QDQ format, int8
    weights per output channel, int8 activations calibrated (min/max) on --calibration
    random batches;
  * both run by onnxruntime's CPUExecutionProvider with --threads intra-op threads, all graph
    optimisations on. Each of --rounds rounds times float then int8 (best of --repeats runs
    each, the least disturbed by other work); the median over rounds is reported, and the
    best round in brackets, so a load spike on a shared machine hits both alike. Also
    reported: how often the two models' top-1 classes agree on the timed inputs (random
    weights: a sanity check, not accuracy).

    .venv/bin/python tools/bench/int8.py [--nets lenet,squeezenet1.1] [--threads 2]
                                         [--rounds 20] [--repeats 10]
                                         [--signed-activations]

The measurement runs in a child process with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed
(tools/bench/blas_env.py's "unset": a user's machine), the thread variables set before numpy
loads. onnxruntime is the runtime under test here, installed with netforge's [onnx] extra.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NETS = {  # name -> (deploy prototxt, batch timed, input range)
    "lenet": (ROOT / "configs" / "lenet.prototxt", 100, "unit"),
    "squeezenet1.1": (ROOT / "configs" / "zoo" / "squeezenet1.1_deploy.prototxt", 8, "normal"),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="lenet,squeezenet1.1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--calibration", type=int, default=4, help="random calibration batches")
    parser.add_argument("--signed-activations", action="store_true",
                        help="int8 activations (S8S8) instead of compress's uint8 (U8S8)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def build(prototxt: Path, batch: int, seed: int = 0):
    """netforge's net of ``prototxt`` at ``batch``, He-scaled random weights (zoo.py's way)."""
    import numpy as np

    from netforge import config
    from netforge.inspect.summary import set_batch_size
    from netforge.net import Net

    param = config.load_net_param(prototxt)
    set_batch_size(param, batch)
    net = Net(param, "test", seed=seed)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if layer.type in ("Convolution", "InnerProduct"):
            weights = layer.blobs[0]
            fan_in = weights.count // weights.shape[0]
            weights.data[...] = rng.standard_normal(weights.shape) * np.sqrt(2.0 / fan_in)
            for bias in layer.blobs[1:]:
                bias.data[...] = rng.normal(0, 0.01, bias.shape)
    return net


def inputs(shape, kind: str, count: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    draw = rng.random if kind == "unit" else rng.standard_normal
    return [draw(shape).astype(np.float32) for _ in range(count)]


def measure(name: str, args, workdir: Path) -> dict:
    import numpy as np

    from netforge.deploy.compress import int8
    from netforge.deploy.onnx_export import export_onnx

    prototxt, batch, kind = NETS[name]
    net = build(prototxt, batch)
    shape = tuple(net.blobs[net.inputs[0]].shape)
    float_path, int8_path = workdir / f"{name}.onnx", workdir / f"{name}.int8.onnx"
    export_onnx(net, float_path)
    int8.quantize_qdq(str(float_path), str(int8_path), inputs(shape, kind, args.calibration, 1),
                      signed_activations=args.signed_activations)
    timed = inputs(shape, kind, 1, 2)[0]
    f = int8.session(float_path, args.threads)
    q = int8.session(int8_path, args.threads)
    feed = f.get_inputs()[0].name
    agree = float(np.mean(f.run(None, {feed: timed})[0].reshape(batch, -1).argmax(1)
                          == q.run(None, {feed: timed})[0].reshape(batch, -1).argmax(1)))
    float_ms, int8_ms = [], []
    for _ in range(args.rounds):
        float_ms.append(int8.ms_per_batch(f, timed, args.repeats))
        int8_ms.append(int8.ms_per_batch(q, timed, args.repeats))
    return {"net": name, "batch": batch, "float_ms": float_ms, "int8_ms": int8_ms,
            "agree": agree, "float_bytes": float_path.stat().st_size,
            "int8_bytes": int8_path.stat().st_size}


def child(args) -> None:
    sys.path.insert(0, str(ROOT))
    import onnxruntime

    from tools.bench import blas_env

    kind = "S8S8 (int8 activations)" if args.signed_activations else "U8S8 (uint8 activations)"
    print(f"onnxruntime {onnxruntime.__version__}, {args.threads} intra-op threads, {kind}; "
          f"BLAS: {blas_env.describe()}")
    print(f"ms per batch: median over {args.rounds} rounds (and the best round), each round "
          f"the best of {args.repeats} runs")
    print(f"{'net':<14} {'batch':>5} {'float ms':>17} {'int8 ms':>17} {'speed-up':>15} "
          f"{'top-1 agree':>11} {'float MB':>8} {'int8 MB':>8}   per round: float / int8 ms")
    with tempfile.TemporaryDirectory() as tmp:
        for name in [n for n in args.nets.split(",") if n]:
            if name not in NETS:
                raise SystemExit(f"unknown net {name!r}: use {', '.join(NETS)}")
            r = measure(name, args, Path(tmp))
            fm, qm = statistics.median(r["float_ms"]), statistics.median(r["int8_ms"])
            fb, qb = min(r["float_ms"]), min(r["int8_ms"])
            rounds = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(r["float_ms"], r["int8_ms"],
                                                                   strict=True))
            print(f"{name:<14} {r['batch']:>5} {fm:>8.2f} ({fb:>6.2f}) {qm:>8.2f} ({qb:>6.2f}) "
                  f"{fm / qm:>6.2f}x ({fb / qb:>5.2f}x) "
                  f"{100 * r['agree']:>10.1f}% {r['float_bytes'] / 1e6:>8.2f} "
                  f"{r['int8_bytes'] / 1e6:>8.2f}   {rounds}", flush=True)


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    sys.path.insert(0, str(ROOT))
    from tools.bench import blas_env

    env = blas_env.environment("unset")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)  # before numpy is imported in the child
    print(f"=== BLAS setting {blas_env.label('unset', env)}", flush=True)
    done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child"], env=env)
    raise SystemExit(done.returncode)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
