"""Images per second of `netforge predict` vs onnxruntime and PyTorch (CPU), same images, one run.

For each net (configs/zoo/<net>_deploy.prototxt, random He-scaled weights and BatchNorm
statistics from tools/bench/zoo.py's builder):
  * netforge: the model is frozen as a user would (`freeze --fold-bn --drop-dropout`, mean
    values 104/117/123, image dims 256 -> centre crop), then netforge.deploy.predict.Predictor runs
    it — the code behind `netforge predict`, decoding the next batch on a thread while the
    net runs;
  * onnxruntime: the frozen model exported with netforge's export-onnx, run by an
    InferenceSession (all graph optimisations on);
  * PyTorch: tools/bench/torch_translate.py's layer-by-layer translation of the unfolded
    net, in inference mode.
All three get the same PNG files (256×256) and the same preprocessing (netforge's), so
"end to end" = decode + preprocess + forward; "forward only" times the net on a batch
decoded beforehand. Batch 32 and batch 1; a warm-up batch first. Top-1 agreement between the
three is checked. Ratios > 1 mean netforge is faster.

    .venv/bin/python tools/bench/predict.py [--nets squeezenet1.1,resnet50] [--threads 2]
                                            [--images 64] [--single 8]
                                            [--blas-env unset,environment]

Each BLAS setting (tools/bench/blas_env.py: "unset" removes OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE for all three contenders, "environment" keeps them) runs in its own child
process, which prints the BLAS kernels loaded (threadpoolctl) and the first-use time of
netforge's compiled kernels, kept out of the rates.

PyTorch and onnxruntime are benchmark oracles (pip install torch onnxruntime); netforge
never imports them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "configs" / "zoo"
MEAN = (104.0, 117.0, 123.0)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="squeezenet1.1,resnet50")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=64, help="images timed at batch 32")
    parser.add_argument("--single", type=int, default=8, help="images timed at batch 1")
    parser.add_argument("--blas-env", default="unset,environment",
                        help="BLAS settings to run under, one child each (tools/bench/blas_env.py)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


ARGS = parse_args()
if ARGS.child is None:
    # One child per BLAS setting, its environment fixed before numpy (and onnxruntime,
    # torch) load their BLAS: "unset" is a user's machine, "environment" what this one pins.
    import subprocess

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import blas_env

    for setting in [s for s in ARGS.blas_env.split(",") if s]:
        env = blas_env.environment(setting)
        print(f"\n=== BLAS setting {blas_env.label(setting, env)}", flush=True)
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", setting],
                              env=env)
        if done.returncode:
            raise SystemExit(done.returncode)
    raise SystemExit(0)
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)  # before numpy is imported

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import blas_env  # noqa: E402
from zoo import build_netforge  # noqa: E402

from netforge.deploy.frozen import freeze, load_frozen  # noqa: E402
from netforge.deploy.onnx_export import export_onnx  # noqa: E402
from netforge.deploy.predict import Predictor  # noqa: E402
from netforge.deploy.preprocess import Preprocess  # noqa: E402
from tools.bench.torch_translate import translate  # noqa: E402


def jit_state() -> str:
    try:
        from netforge.ops import compiled
    except ImportError:
        return "none"
    return "numba" if compiled.enabled() else "off"


def warm_up_compiled_kernels() -> None:
    """Compile (or load from numba's cache) what a predict pass uses, before timing."""
    from netforge.ops import neuron, pooling

    x = np.zeros((1, 1, 4, 4), np.float32)
    y = np.zeros((1, 1, 2, 2), np.float32)
    for kind in ("max", "ave"):
        spec = getattr(pooling, f"{kind}_pool_workspace_shapes")(
            x.shape, y.shape, kernel=2, stride=2, dtype=np.float32)
        ws = {k: np.empty(shape, dt) for k, (shape, dt) in spec.items()}
        if kind == "max":
            pooling.max_pool_forward(x, y, None, kernel=2, stride=2, ws=ws)
        else:
            pooling.ave_pool_forward(x, y, kernel=2, stride=2, ws=ws)
    neuron.relu_forward(x, x)


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Smooth random colour images (so PNG decoding costs what it costs for photos)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((256, 256), Image.BILINEAR)
        path = folder / f"img{i:04d}.png"
        image.save(path)
        paths.append(path)
    return paths


def staged(settings: Preprocess, paths) -> np.ndarray:
    c, h, w = settings.input_chw
    batch = np.empty((len(paths), c, h, w), np.float32)
    for i, path in enumerate(paths):
        settings.fill(settings.load(path), batch[i:i + 1])
    return batch


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def bench_netforge(frozen_path, paths, batch, timed):
    model = load_frozen(frozen_path)
    predictor = Predictor(model.net, model.preprocess, batch_size=batch)
    list(predictor.run(paths[:batch], top_k=1))  # warm-up
    start = time.perf_counter()
    top1 = [p.top[0][0] for p in predictor.run(paths[:timed], top_k=1)]
    e2e = rate(timed, time.perf_counter() - start)
    x = staged(model.preprocess, paths[:batch])
    name = model.preprocess.input
    start = time.perf_counter()
    for _ in range(max(timed // batch, 1)):
        model.net.forward(**{name: x})
    fwd = rate(max(timed // batch, 1) * batch, time.perf_counter() - start)
    return e2e, fwd, top1, model.preprocess


def bench_onnx(onnx_path, settings, paths, batch, timed):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = ARGS.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(chunk):
        return session.run(None, {name: staged(settings, chunk)})[0]

    run(paths[:batch])  # warm-up
    start = time.perf_counter()
    top1 = []
    for i in range(0, timed, batch):
        out = run(paths[i:i + batch])
        top1.extend(out.reshape(len(out), -1).argmax(axis=1).tolist())
    e2e = rate(timed, time.perf_counter() - start)
    x = staged(settings, paths[:batch])
    start = time.perf_counter()
    for _ in range(max(timed // batch, 1)):
        session.run(None, {name: x})
    fwd = rate(max(timed // batch, 1) * batch, time.perf_counter() - start)
    return e2e, fwd, top1


def bench_torch(model, output, settings, paths, batch, timed):
    import torch

    torch.set_num_threads(ARGS.threads)

    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x))[output].numpy()

    run(staged(settings, paths[:batch]))  # warm-up
    start = time.perf_counter()
    top1 = []
    for i in range(0, timed, batch):
        out = run(staged(settings, paths[i:i + batch]))
        top1.extend(out.reshape(len(out), -1).argmax(axis=1).tolist())
    e2e = rate(timed, time.perf_counter() - start)
    x = staged(settings, paths[:batch])
    start = time.perf_counter()
    for _ in range(max(timed // batch, 1)):
        run(x)
    fwd = rate(max(timed // batch, 1) * batch, time.perf_counter() - start)
    return e2e, fwd, top1


def bench_net(name: str, work: Path, paths) -> list[dict]:
    net = build_netforge(name, batch=2, seed=0)
    weights = work / f"{name}.caffemodel"
    net.save(weights)
    frozen_path = work / f"{name}.nf"
    settings = Preprocess(mean_values=MEAN, image_dims=(256, 256))
    freeze(ZOO / f"{name}_deploy.prototxt", weights, frozen_path, settings, fold_bn=True,
           drop_dropout=True, overwrite=True)
    onnx_path = work / f"{name}.onnx"
    export_onnx(load_frozen(frozen_path).net, onnx_path)
    torch_model = translate(net)
    output = load_frozen(frozen_path).net.outputs[0]
    rows = []
    for batch, timed in ((32, ARGS.images), (1, ARGS.single)):
        nf_e2e, nf_fwd, nf_top1, bound = bench_netforge(frozen_path, paths, batch, timed)
        ort_e2e, ort_fwd, ort_top1 = bench_onnx(onnx_path, bound, paths, batch, timed)
        pt_e2e, pt_fwd, pt_top1 = bench_torch(torch_model, output, bound, paths, batch, timed)
        agree = (np.mean(np.array(nf_top1) == np.array(ort_top1)),
                 np.mean(np.array(nf_top1) == np.array(pt_top1)))
        rows.append({"net": name, "batch": batch, "images": timed,
                     "nf": nf_e2e, "ort": ort_e2e, "torch": pt_e2e,
                     "nf_fwd": nf_fwd, "ort_fwd": ort_fwd, "torch_fwd": pt_fwd,
                     "agree_ort": agree[0], "agree_torch": agree[1]})
        print_row(rows[-1])
    return rows


HEADER = (f"{'net':<14}{'batch':>6}  {'netforge':>9} {'onnxrt':>9} {'torch':>9}  "
          f"{'nf/ort':>7} {'nf/torch':>8}  {'fwd nf/ort':>10} {'fwd nf/torch':>12}  top-1 agree")


def print_row(r: dict) -> None:
    print(f"{r['net']:<14}{r['batch']:>6}  {r['nf']:>9.1f} {r['ort']:>9.1f} {r['torch']:>9.1f}  "
          f"{r['nf'] / r['ort']:>7.2f} {r['nf'] / r['torch']:>8.2f}  "
          f"{r['nf_fwd'] / r['ort_fwd']:>10.2f} {r['nf_fwd'] / r['torch_fwd']:>12.2f}  "
          f"ort {r['agree_ort']:.0%}, torch {r['agree_torch']:.0%}", flush=True)


def main() -> None:
    nets = [n for n in ARGS.nets.split(",") if n]
    with tempfile.TemporaryDirectory(prefix="netforge-bench-predict-") as tmp:
        work = Path(tmp)
        paths = make_images(work / "images", max(ARGS.images, ARGS.single, 32))
        print(f"images/s end to end (decode + preprocess + forward), {ARGS.threads} threads; "
              "ratios > 1: netforge faster; all from this one run")
        first = time.perf_counter()
        warm_up_compiled_kernels()
        print(f"netforge compiled kernels: {jit_state()}, first use "
              f"{time.perf_counter() - first:.2f} s (compile or cache load, not in the rates)")
        print(HEADER)
        rows = [row for name in nets for row in bench_net(name, work, paths)]
    import onnxruntime  # noqa: F401  (so that its BLAS, if any, is listed)
    import torch  # noqa: F401

    print(f"BLAS: {blas_env.describe()}")
    print("\nforward only, images/s:")
    for r in rows:
        print(f"  {r['net']:<14} batch {r['batch']:>2}: netforge {r['nf_fwd']:.1f}, "
              f"onnxruntime {r['ort_fwd']:.1f}, torch {r['torch_fwd']:.1f}")


if __name__ == "__main__":
    main()
