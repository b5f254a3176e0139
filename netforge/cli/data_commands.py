"""``netforge convert`` and ``netforge mean``: image folders to datasets, and their mean."""

from __future__ import annotations

import click

from netforge.cli.options import rate_progress


@click.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("dest", type=click.Path())
@click.option("--backend", type=click.Choice(["lmdb", "hdf5"]), default="lmdb", show_default=True)
@click.option("--list", "list_file", type=click.Path(exists=True, dir_okay=False),
              help="Caffe list file (`relpath label` a line) of images under SOURCE.")
@click.option("--resize-height", type=int, default=0, show_default=True, help="0 keeps the size.")
@click.option("--resize-width", type=int, default=0, show_default=True, help="0 keeps the size.")
@click.option("--gray", is_flag=True, help="Store one grey channel.")
@click.option("--shuffle/--no-shuffle", default=True, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffle/split seed.")
@click.option("--encoded", is_flag=True,
              help="Store compressed image bytes (Datum.encoded), decoded by the Data layer.")
@click.option("--encode-type", type=click.Choice(["png", "jpg"]), default=None,
              help="Format of the stored bytes (implies --encoded); default: each file's own.")
@click.option("--check-size", is_flag=True, help="Require every image to have the same size.")
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0,
              help="Hold out this fraction per class: writes DEST/train and DEST/val.")
@click.option("--overwrite", is_flag=True, help="Replace an existing DEST.")
def convert(source, dest, backend, list_file, resize_height, resize_width, gray, shuffle, seed,
            encoded, encode_type, check_size, val_fraction, overwrite):
    """Convert class folders (or a Caffe list file) of images into an LMDB/HDF5 dataset."""
    from netforge.data.convert import convert_images

    summary = convert_images(
        source, dest, list_file=list_file, backend=backend,
        resize=(resize_height, resize_width), gray=gray, shuffle=shuffle, seed=seed,
        encoded=encoded or bool(encode_type), encode_type=encode_type,
        check_size=check_size, val_fraction=val_fraction, overwrite=overwrite,
        progress=rate_progress("converting", "images"),
    )
    click.echo(str(summary))


@click.command()
@click.argument("db", type=click.Path(exists=True))
@click.argument("output", type=click.Path(dir_okay=False))
def mean(db, output):
    """Pixel-wise mean image of a dataset (LMDB, or HDF5 list/folder) as a 1×C×H×W
    .binaryproto for transform_param's mean_file; also prints the per-channel means."""
    from netforge.data.convert import compute_mean
    from netforge.data.records import save_mean_file

    image = compute_mean(db, progress=rate_progress("computing mean", "images"))
    save_mean_file(output, image)
    channel_means = image[0].mean(axis=(1, 2))
    click.echo(f"wrote mean {'×'.join(map(str, image.shape))} to {output}")
    for c, value in enumerate(channel_means):
        click.echo(f"mean_value channel {c}: {value:.4f}")
