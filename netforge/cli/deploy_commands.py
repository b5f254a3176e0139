"""``netforge freeze``, ``predict`` and ``export-onnx``: trained weights to deployable files
and predictions."""

from __future__ import annotations

import os
import sys

import click

from netforge.cli.options import bar_callback, gpu_option, select_device
from netforge.errors import ConfigError


def preprocessing_options(func):
    """The flags that say how images become net inputs (freeze, and predict on a prototxt;
    on a frozen model they override what the file holds)."""
    options = [
        click.option("--mean-file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Mean image (.binaryproto from `netforge mean`, or .npy)."),
        click.option("--mean-value", "mean_values", multiple=True,
                     help="Per-channel mean in the net's channel order, e.g. "
                          "--mean-value 104,117,123 (or repeat the flag)."),
        click.option("--scale", type=float, default=None,
                     help="Factor after the mean (transform_param scale, e.g. 0.00390625)."),
        click.option("--raw-scale", type=float, default=None,
                     help="Pixel range the net was trained on: images in [0, 1] are "
                          "multiplied by it before the mean. [default: 255]"),
        click.option("--channel-order", type=click.Choice(["bgr", "rgb"], case_sensitive=False),
                     default=None, help="Colour order the net expects. [default: bgr, as Caffe]"),
        click.option("--image-dims", type=click.IntRange(min=1), nargs=2, default=None,
                     metavar="H W",
                     help="Resize images to H×W, then centre-crop to the net input "
                          "(pycaffe's image_dims). [default: the input size]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def preprocessing_settings(mean_file, mean_values, scale, raw_scale, channel_order,
                           image_dims) -> dict:
    """The flags of ``preprocessing_options`` as ``preprocess.with_options`` keywords."""
    values = [v for item in mean_values for v in item.replace(",", " ").split()]
    try:
        floats = [float(v) for v in values]
    except ValueError:
        raise ConfigError(f"--mean-value takes numbers, got {' '.join(values)}") from None
    return {"mean_file": mean_file, "mean_values": floats, "scale": scale,
            "raw_scale": raw_scale, "channel_order": channel_order,
            "image_dims": tuple(image_dims) if image_dims else None}


@click.command()
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Deploy prototxt (an Input layer feeds the images).")
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Trained weights (.caffemodel or .h5).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Frozen model file to write (e.g. model.nf).")
@preprocessing_options
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="Class names, one a line (e.g. the labels.txt of `netforge convert`).")
@click.option("--transform-from", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Take scale, mean and crop from this train_val net's TEST data layer "
                   "(transform_param); the flags above override it.")
@click.option("--fold-bn", is_flag=True,
              help="Fold BatchNorm (+ Scale) into the convolution before it.")
@click.option("--drop-dropout", is_flag=True, help="Remove Dropout layers (identity at test).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def freeze(model, weights, output, mean_file, mean_values, scale, raw_scale, channel_order,
           image_dims, labels_file, transform_from, fold_bn, drop_dropout, overwrite):
    """Write one self-contained file: deploy net, weights, preprocessing and labels."""
    from netforge.deploy import frozen, transform_source
    from netforge.deploy.preprocess import with_options

    base = None
    if transform_from:  # Caffe's TEST-phase transform_param, said out loud
        name, input_hw = transform_source.deploy_input(model)
        choice = transform_source.preprocess_from_train_val(transform_from, name, input_hw)
        click.echo(f"preprocessing {'; '.join(choice.notes)}", err=True)
        base = choice.settings
    settings = with_options(base, **preprocessing_settings(mean_file, mean_values, scale, raw_scale,
                                                   channel_order, image_dims))
    labels = frozen.read_labels(labels_file) if labels_file else []
    param = frozen.freeze(model, weights, output, settings, labels=labels, fold_bn=fold_bn,
                          drop_dropout=drop_dropout, overwrite=overwrite)
    info = param.frozen
    notes = [f"{len(param.layer)} layers", f"{os.path.getsize(output) / 2**20:.1f} MB"]
    if info.batch_norm_folded:
        notes.append("BatchNorm folded")
    if info.dropout_removed:
        notes.append("Dropout removed")
    if labels:
        notes.append(f"{len(labels)} labels")
    click.echo(f"wrote {output} ({', '.join(notes)})")
    click.echo(f"preprocessing: {transform_source.describe(settings)}", err=True)


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--weights", default=None, help="Weights, when MODEL is a deploy prototxt.")
@preprocessing_options
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="Class names, one a line (overrides a frozen model's).")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True, help="json: one object a line; csv: one row per image and rank.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--oversample", is_flag=True,
              help="Average Caffe's 10 crops (corners + centre, and their mirrors).")
@click.option("--output-blob", default=None,
              help="Output holding the class scores. [default: the last Softmax's, else the "
                   "first output]")
@gpu_option()
def predict(model, inputs, weights, mean_file, mean_values, scale, raw_scale, channel_order,
            image_dims, labels_file, top_k, fmt, batch_size, oversample, output_blob, gpu):
    """Classify images (files, or folders searched recursively) with a frozen model, or a
    deploy prototxt with --weights.

    Unreadable images are reported on stderr and skipped. Exit status: 0 when at least one
    image was classified, 1 when none could be, 2 for bad usage or no image files at all.
    """
    import time

    from netforge.deploy import predict as prediction
    from netforge.errors import DataError, RunError

    select_device(gpu)
    paths = prediction.find_images(inputs)
    if not paths:
        raise DataError(f"no image files in {', '.join(inputs)}")
    net, settings, labels = prediction.open_model(
        model, weights, labels_file, output_blob,
        **preprocessing_settings(mean_file, mean_values, scale, raw_scale, channel_order,
                                 image_dims))
    # A batch never larger than the images there are: the net's input is sized to it.
    predictor = prediction.Predictor(net, settings, labels, batch_size=min(batch_size, len(paths)),
                                     output=output_blob, oversample=oversample)
    skipped = []

    def on_skip(path, reason):
        skipped.append(path)
        click.echo(f"netforge: warning: skipped {reason}", err=True)

    progress = bar_callback("predicting") if len(paths) > batch_size else None
    start = time.perf_counter()
    results = []
    if fmt == "csv":
        click.echo(",".join(prediction.CSV_HEADER))
    for result in predictor.run(paths, top_k=top_k, on_skip=on_skip, progress=progress):
        results.append(result)
        if fmt == "json":
            click.echo(prediction.format_json_line(result))
        elif fmt == "csv":
            click.echo(prediction.format_csv_rows(result))
    if fmt == "table" and results:
        click.echo(prediction.format_table(results))
    seconds = time.perf_counter() - start
    sys.stdout.flush()  # the results before the summary, when both go to a terminal
    click.echo(f"predicted {len(results)} image(s), skipped {len(skipped)}, in {seconds:.2f} s "
               f"({len(results) / max(seconds, 1e-9):.1f} images/s)", err=True)
    if not results:
        raise RunError("no image could be read")


@click.command(name="export-onnx")
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Deploy prototxt (with --weights) or a frozen model.")
@click.option("--weights", default=None, help="Weights, when --model is a prototxt.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="ONNX file to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def export_onnx(model, weights, output, overwrite):
    """Export a deploy net with its weights (or a frozen model) as ONNX (opset 17)."""
    from netforge.deploy import frozen
    from netforge.deploy.onnx_export import export_onnx as write_onnx
    from netforge.deploy.onnx_export import frozen_metadata
    from netforge.net import Net

    if os.path.exists(output) and not overwrite:
        raise ConfigError(f"{output} already exists; pass --overwrite to replace it")
    metadata = None
    if frozen.is_frozen_file(model):
        if weights:
            raise ConfigError(f"{model} is a frozen model and holds its weights; drop --weights")
        loaded = frozen.load_frozen(model)
        net, metadata = loaded.net, frozen_metadata(loaded)
    elif weights:
        net = Net(model, "test", weights=weights)
    else:
        raise ConfigError(f"{model} is a net prototxt: give its --weights")
    nodes = write_onnx(net, output, metadata)
    click.echo(f"wrote {output} ({nodes} nodes, opset 17)")
