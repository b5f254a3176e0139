"""Does the data pipeline keep up with training? Images/s delivered vs images/s consumed.

Synthesises 256×256 JPEG photos-like images in a temporary folder, converts them to a raw and
a JPEG-encoded LMDB (convert images/s), computes their mean, then measures the images/s the
Data layer delivers for AlexNet's preprocessing (227×227 random crops, mirror, mean file) at
steady state, and the images/s an AlexNet training step (forward + backward + SGD update)
consumes on this machine. The goal is delivery >= 3x consumption.

    .venv/bin/python tools/bench/data.py [--images 500] [--batch 64] [--alexnet-batch 16]

When the layers AlexNet needs are not registered yet (LRN), the script measures a stand-in
(AlexNet without its two LRN layers, which cost well under 5% of its time) and says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ALEXNET = """
name: "AlexNet"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: @N@ dim: 3 dim: 227 dim: 227 } shape { dim: @N@ } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 96 kernel_size: 11 stride: 4
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "norm2" type: "LRN" bottom: "conv2" top: "norm2"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "pool2" type: "Pooling" bottom: "norm2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 384 pad: 1 kernel_size: 3
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 384 pad: 1 kernel_size: 3 group: 2
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 256 pad: 1 kernel_size: 3 group: 2
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 4096
    weight_filler { type: "gaussian" std: 0.005 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6"
  dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 4096
    weight_filler { type: "gaussian" std: 0.005 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7"
  dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 1000
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
"""


def synthesize_images(root: Path, count: int, classes: int = 10) -> None:
    """Photo-like 256×256 JPEGs (smooth colour fields plus texture noise, quality 90):
    random noise would compress and decode unlike real photos."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32) / 256
    for i in range(count):
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        freq = rng.uniform(1, 6, size=(3, 2))
        phase = rng.uniform(0, 2 * np.pi, size=3)
        field = [127 + 100 * np.sin(freq[c, 0] * 2 * np.pi * xx + freq[c, 1] * 3 * yy + phase[c])
                 for c in range(3)]
        rgb = np.stack(field, axis=-1) + rng.normal(0, 12, size=(256, 256, 3))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(
            folder / f"{i:05d}.jpg", quality=90)


def time_convert(src: Path, dest: Path, **kwargs) -> float:
    from netforge.data.convert import convert_images

    start = time.perf_counter()
    summary = convert_images(src, dest, **kwargs)
    return summary.written / (time.perf_counter() - start)


def data_layer_rate(db: Path, mean_file: Path, batch: int, batches: int, workers: str) -> float:
    """Steady-state images/s out of a TRAIN Data layer (crop 227, mirror, mean file)."""
    import numpy as np
    from google.protobuf import text_format

    from netforge import netforge_pb2 as pb
    from netforge.blob import Blob
    from netforge.layers.base import LayerContext
    from netforge.layers.data import DataLayer

    os.environ["NETFORGE_DATA_WORKERS"] = workers
    text = (f'name: "data" type: "Data" top: "data" top: "label" '
            f'data_param {{ source: "{db}" batch_size: {batch} backend: LMDB prefetch: 4 }} '
            f'transform_param {{ crop_size: 227 mirror: true mean_file: "{mean_file}" }}')
    layer = DataLayer(text_format.Parse(text, pb.LayerParameter()),
                      LayerContext(phase="TRAIN", rng=np.random.default_rng(0)))
    layer.setup([])
    tops = [Blob(shape) for shape in layer.reshape([])]
    try:
        for _ in range(layer.depth + 1):  # drain what was prefetched: measure production
            layer.forward([], tops)
        start = time.perf_counter()
        for _ in range(batches):
            layer.forward([], tops)
        return batches * batch / (time.perf_counter() - start)
    finally:
        layer.close()


def alexnet_rate(batch: int, steps: int) -> tuple[float, str]:
    """Images/s of AlexNet training steps (Input layer, so no data loading is included)."""
    import numpy as np

    from netforge import config
    from netforge import netforge_pb2 as pb
    from netforge.layers import layer_types
    from netforge.train.solver import Solver

    text = ALEXNET.replace("@N@", str(batch))
    what = "AlexNet (bvlc_alexnet train_val layers)"
    if "LRN" not in layer_types():
        text = "\n".join(line for line in text.splitlines() if '"LRN"' not in line
                         and "lrn_param" not in line)
        text = text.replace('bottom: "norm1"', 'bottom: "conv1"')
        text = text.replace('bottom: "norm2"', 'bottom: "conv2"')
        what = "STAND-IN: AlexNet without its 2 LRN layers (LRN not registered yet)"
    net = config.parse_text(text, pb.NetParameter())
    sp = pb.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=5e-4, lr_policy="step",
                            gamma=0.1, stepsize=100000, max_iter=10**9, random_seed=1)
    sp.train_net_param.CopyFrom(net)
    solver = Solver(sp)
    rng = np.random.default_rng(0)
    solver.net.blobs["data"].data[...] = rng.normal(0, 50, size=(batch, 3, 227, 227))
    solver.net.blobs["label"].data[...] = rng.integers(0, 1000, size=batch)
    solver.step(1)  # warm-up: workspaces, BLAS threads
    samples = []
    for _ in range(steps):
        start = time.perf_counter()
        solver.step(1)
        samples.append(time.perf_counter() - start)
    solver.close()
    return batch / statistics.median(samples), what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64, help="Data layer batch size")
    parser.add_argument("--batches", type=int, default=12, help="timed Data layer batches")
    parser.add_argument("--alexnet-batch", type=int, default=16)
    parser.add_argument("--alexnet-steps", type=int, default=3)
    parser.add_argument("--skip-alexnet", action="store_true")
    args = parser.parse_args()

    from netforge.data.convert import compute_mean
    from netforge.data.records import save_mean_file
    from netforge.data.workers import default_workers

    cores = os.cpu_count()
    auto_workers = str(default_workers())
    with tempfile.TemporaryDirectory(prefix="netforge-bench-data-") as tmp:
        tmp = Path(tmp)
        synthesize_images(tmp / "src", args.images)
        raw_rate = time_convert(tmp / "src", tmp / "raw")
        enc_rate = time_convert(tmp / "src", tmp / "jpg", encoded=True, encode_type="jpg")
        save_mean_file(tmp / "mean.binaryproto", compute_mean(tmp / "raw"))
        size_raw = (tmp / "raw" / "data.mdb").stat().st_size / 2**20
        size_jpg = (tmp / "jpg" / "data.mdb").stat().st_size / 2**20

        print(f"machine: {cores} CPU core(s); data workers per layer: {auto_workers} (auto)")
        print(f"convert {args.images} 256x256 JPEGs -> LMDB: raw {raw_rate:7.0f} images/s "
              f"({size_raw:.0f} MiB), encoded jpg {enc_rate:7.0f} images/s ({size_jpg:.0f} MiB)")
        rates = {}
        for name in ("raw", "jpg"):
            for workers in ("1", auto_workers):
                rates[name, workers] = data_layer_rate(
                    tmp / name, tmp / "mean.binaryproto", args.batch, args.batches, workers)
                print(f"Data layer, {name:3s} LMDB, crop 227 + mirror + mean, batch "
                      f"{args.batch}, {workers} worker(s): {rates[name, workers]:7.0f} images/s")

    if args.skip_alexnet:
        return
    consumed, what = alexnet_rate(args.alexnet_batch, args.alexnet_steps)
    print(f"training consumes: {what}, batch {args.alexnet_batch}, forward+backward+update: "
          f"{consumed:7.1f} images/s")
    for name in ("raw", "jpg"):
        best = max(rates[name, w] for w in ("1", auto_workers))
        verdict = "OK" if best >= 3 * consumed else "BELOW GOAL"
        print(f"  {name:3s}: delivery / consumption = {best / consumed:6.1f}x  (goal >= 3x: "
              f"{verdict})")


if __name__ == "__main__":
    main()
