"""``netforge extract-features``: Caffe's extract_features tool."""

from __future__ import annotations

import click


@click.command(name="extract-features")
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Net prototxt whose data layer feeds the dataset.")
@click.option("--weights", required=True, help="Trained weights (.caffemodel or .h5).")
@click.option("--blobs", required=True, help="Blob names, comma-separated (e.g. fc7,prob).")
@click.option("--output", "-o", "outputs", required=True,
              help="One output per blob, comma-separated (LMDB folders, .h5 or .npy files).")
@click.option("--iterations", "-n", type=click.IntRange(min=1), required=True,
              help="Mini-batches to run (Caffe's num_mini_batches).")
@click.option("--format", "fmt", type=click.Choice(["lmdb", "hdf5", "npy"]), default="lmdb",
              show_default=True)
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False),
              default="TEST", show_default=True)
@click.option("--gpu", default=None, type=click.IntRange(min=-1), help="-1 for CPU or a device id.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def extract_features(model, weights, blobs, outputs, iterations, fmt, phase, gpu, overwrite):
    """Write the named blobs of a net over N mini-batches into datasets, one per blob."""
    from netforge import backend
    from netforge.deploy.features import extract_features as run
    from netforge.deploy.predict import warn_layers_without_weights
    from netforge.net import Net

    if gpu is not None and gpu >= 0:
        backend.set_device(gpu)
        backend.set_mode_gpu()
    else:
        backend.set_mode_cpu()
    net = Net(model, phase.lower(), weights=weights)
    warn_layers_without_weights(net, weights)
    names = [b for b in blobs.split(",") if b]
    paths = [o for o in outputs.split(",") if o]
    try:
        shapes = run(net, names, paths, iterations, fmt, overwrite=overwrite)
    finally:
        net.close()
    for (name, shape), path in zip(shapes.items(), paths, strict=True):
        click.echo(f"wrote {name} {'×'.join(map(str, shape))} to {path} [{fmt}]")
