"""The ``netforge`` command line (click). Flags in, library calls out; no logic here.

Bad input ends with one line ``netforge: error: ...`` and exit code 2; a failed run with 1.
``--debug`` or ``NETFORGE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import click

from netforge.errors import ConfigError, DeviceError, NetforgeError
from netforge.version import __version__

_DEBUG = {"on": os.environ.get("NETFORGE_DEBUG", "") not in ("", "0")}


def main(argv=None) -> None:
    """Console entry point: runs the click group and maps errors to exit codes."""
    try:
        cli.main(args=argv, prog_name="netforge", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare `netforge`: the help, as before
        exc.show()
        sys.exit(2)
    except click.ClickException as exc:  # bad flags, missing files: the same one line
        click.echo(f"netforge: error: {_click_message(exc)}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("netforge: interrupted", err=True)
        sys.exit(1)
    except NetforgeError as exc:
        if _DEBUG["on"]:
            traceback.print_exc()
        click.echo(f"netforge: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("netforge: interrupted", err=True)
        sys.exit(1)


def _click_message(exc: click.ClickException) -> str:
    """Click's message, with a pointer to the command's --help for a usage error."""
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netforge")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors in the log.")
def cli(debug: bool, quiet: bool) -> None:
    """Caffe-compatible nets and solvers, trained from the command line."""
    from netforge.cli import logs

    _DEBUG["on"] = _DEBUG["on"] or debug
    logs.configure(logging.WARNING if quiet else logging.INFO)


def _select_device(gpu: str | None, solver_param=None) -> None:
    """--gpu -1 = CPU, an id = that GPU; unset: the solver's explicit solver_mode decides."""
    from netforge import backend

    if gpu is None and solver_param is not None and solver_param.HasField("solver_mode") and (
        solver_param.solver_mode == solver_param.GPU
    ):
        gpu = str(solver_param.device_id)
    if gpu is None or gpu.strip() == "-1":
        backend.set_mode_cpu()
        return
    if gpu == "all" or "," in gpu:
        raise DeviceError("multi-GPU training (--gpu all or a list) is not supported yet; "
                          "give one device id")
    try:
        device = int(gpu)
    except ValueError:
        raise ConfigError(f'--gpu must be -1, a device id or "all", got "{gpu}"') from None
    backend.set_device(device)
    backend.set_mode_gpu()


# -- convert ---------------------------------------------------------------------------------


@cli.command()
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
        progress=_rate_progress("converting", "images"),
    )
    click.echo(str(summary))


@cli.command()
@click.argument("db", type=click.Path(exists=True))
@click.argument("output", type=click.Path(dir_okay=False))
def mean(db, output):
    """Pixel-wise mean image of a dataset (LMDB, or HDF5 list/folder) as a 1×C×H×W
    .binaryproto for transform_param's mean_file; also prints the per-channel means."""
    from netforge.data.convert import compute_mean
    from netforge.data.records import save_mean_file

    image = compute_mean(db, progress=_rate_progress("computing mean", "images"))
    save_mean_file(output, image)
    channel_means = image[0].mean(axis=(1, 2))
    click.echo(f"wrote mean {'×'.join(map(str, image.shape))} to {output}")
    for c, value in enumerate(channel_means):
        click.echo(f"mean_value channel {c}: {value:.4f}")


def _rate_progress(label: str, unit: str, every_s: float = 10.0):
    """A callback(done, total) showing progress with a rate in ``unit``/s: a bar on a
    terminal, else a plain line every ``every_s`` seconds (and at the end)."""
    import time

    # The clock starts now (just before the work), not at the first callback, which may
    # come only after a whole block of images.
    state = {"bar": None, "done": 0, "start": time.perf_counter(), "last": time.perf_counter()}

    def rate() -> str:
        elapsed = time.perf_counter() - state["start"]
        return f"{state['done'] / elapsed:.0f} {unit}/s" if elapsed > 0 else ""

    def update(done, total):
        now = time.perf_counter()
        if sys.stderr.isatty():
            if state["bar"] is None:
                state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr,
                                                 show_pos=True, item_show_func=lambda _: rate())
                state["bar"].__enter__()
            state["bar"].update(done - state["done"], current_item=done)
            state["done"] = done
            if done >= total:
                state["bar"].__exit__(None, None, None)
            return
        state["done"] = done
        if done >= total or now - state["last"] >= every_s:
            state["last"] = now
            click.echo(f"{label}: {done}/{total} {unit} ({rate()})", err=True)

    return update


def _make_bar_callback(label: str):
    """A callback(done, total) that draws a bar on a terminal (created on the first call)."""
    if not sys.stderr.isatty():
        return None
    state = {"bar": None, "done": 0}

    def update(done, total):
        if state["bar"] is None:
            state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr)
            state["bar"].__enter__()
        state["bar"].update(done - state["done"])
        state["done"] = done
        if done >= total:
            state["bar"].__exit__(None, None, None)

    return update


# -- train -----------------------------------------------------------------------------------


@cli.command()
@click.option("--solver", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Solver prototxt.")
@click.option("--weights", default=None,
              help="Pretrained weights to finetune from: W1[,W2...] copied in order by layer name.")
@click.option("--snapshot", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A .solverstate to resume from.")
@click.option("--gpu", default=None, help="-1 for CPU, a device id, or all.")
@click.option("--sigint-effect", type=click.Choice(["stop", "snapshot", "none"]), default="stop",
              show_default=True, help="What Ctrl-C does.")
@click.option("--sighup-effect", type=click.Choice(["stop", "snapshot", "none"]),
              default="snapshot", show_default=True, help="What SIGHUP does.")
@click.option("--level", type=int, default=0, show_default=True, help="NetState level.")
@click.option("--stage", default="", help="Comma-separated NetState stages.")
def train(solver, weights, snapshot, gpu, sigint_effect, sighup_effect, level, stage):
    """Train the net of a solver file (with testing and snapshots)."""
    from netforge import config
    from netforge.cli.progress import TrainingBar
    from netforge.train.solver import SignalRequests, Solver

    if weights and snapshot:
        raise ConfigError("give either --weights (finetune) or --snapshot (resume), not both")
    solver_param = config.load_solver_param(solver)
    _select_device(gpu, solver_param)
    signals = SignalRequests(sigint_effect, sighup_effect)
    trainer = Solver(solver, level=level, stages=[s for s in stage.split(",") if s],
                     signals=signals)
    bar = None
    try:
        # --weights, else the solver file's weights fields; each may list W1,W2,...
        weight_list = [weights] if weights else list(solver_param.weights)
        if snapshot is None:
            for path in (w for item in weight_list for w in item.split(",") if w):
                logging.getLogger("netforge").info("Finetuning from %s", path)
                trainer.net.copy_from(path)
        bar = TrainingBar(trainer) if TrainingBar.wanted() else None
        if bar:
            bar.attach()
        signals.install()
        trainer.solve(resume_file=snapshot)
    finally:
        signals.uninstall()
        if bar:
            bar.close()
        trainer.close()
    if trainer.stop_requested:
        sys.exit(0 if (solver_param.snapshot_after_train or sigint_effect == "snapshot") else 1)


# -- plot ------------------------------------------------------------------------------------


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Image to write (.png, .svg, .pdf).")
def plot(inputs, output):
    """Draw train loss, test outputs and lr from metrics files (.jsonl) or training logs."""
    from netforge.inspect.plot import plot_curves

    click.echo(f"wrote {plot_curves(inputs, output)}")


# -- test ------------------------------------------------------------------------------------


@cli.command()
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Net prototxt (its TEST phase is used).")
@click.option("--weights", required=True, help="Trained weights (.caffemodel or .h5).")
@click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--gpu", default=None, help="-1 for CPU or a device id.")
@click.option("--level", type=int, default=0, show_default=True)
@click.option("--stage", default="", help="Comma-separated NetState stages.")
def test(model, weights, iterations, gpu, level, stage):
    """Score a trained model: mean of each net output over N batches."""
    from netforge.net import Net
    from netforge.train.evaluate import run_test

    _select_device(gpu)
    net = Net(model, "test", weights=weights, level=level,
              stages=[s for s in stage.split(",") if s])
    try:
        means = run_test(net, iterations, progress=_make_bar_callback("testing"))
    finally:
        net.close()
    for name, value in means.items():
        click.echo(f"{name} = {value:.6g}" if isinstance(value, float) else f"{name} = {value}")


# -- summary ---------------------------------------------------------------------------------


@cli.command()
@click.argument("net", type=click.Path(exists=True, dir_okay=False))
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False),
              default="TEST", show_default=True, help="Which phase's layers to include.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Batch size for the input/data layers (default: as in the file).")
@click.option("--level", type=int, default=0, show_default=True, help="NetState level.")
@click.option("--stage", default="", help="Comma-separated NetState stages.")
def summary(net, phase, batch, level, stage):
    """Per layer: type, top shapes, parameter count and FLOPs; totals."""
    from netforge.inspect.summary import format_table, summary_of_file

    name, rows = summary_of_file(net, phase=phase.upper(), batch=batch, level=level,
                                 stages=[s for s in stage.split(",") if s])
    click.echo(format_table(rows, title=f'Net "{name}" ({phase.upper()})'))


# -- deploy: freeze, predict, export-onnx; everyday tools: time, draw ------------------------


def _preprocessing_options(func):
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


def _preprocessing(mean_file, mean_values, scale, raw_scale, channel_order, image_dims) -> dict:
    values = [v for item in mean_values for v in item.replace(",", " ").split()]
    try:
        floats = [float(v) for v in values]
    except ValueError:
        raise ConfigError(f"--mean-value takes numbers, got {' '.join(values)}") from None
    return {"mean_file": mean_file, "mean_values": floats, "scale": scale,
            "raw_scale": raw_scale, "channel_order": channel_order,
            "image_dims": tuple(image_dims) if image_dims else None}


@cli.command()
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Deploy prototxt (an Input layer feeds the images).")
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Trained weights (.caffemodel or .h5).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Frozen model file to write (e.g. model.nf).")
@_preprocessing_options
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="Class names, one a line (e.g. the labels.txt of `netforge convert`).")
@click.option("--fold-bn", is_flag=True,
              help="Fold BatchNorm (+ Scale) into the convolution before it.")
@click.option("--drop-dropout", is_flag=True, help="Remove Dropout layers (identity at test).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def freeze(model, weights, output, mean_file, mean_values, scale, raw_scale, channel_order,
           image_dims, labels_file, fold_bn, drop_dropout, overwrite):
    """Write one self-contained file: deploy net, weights, preprocessing and labels."""
    from netforge.deploy import frozen
    from netforge.deploy.preprocess import with_options

    settings = with_options(None, **_preprocessing(mean_file, mean_values, scale, raw_scale,
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


@cli.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--weights", default=None, help="Weights, when MODEL is a deploy prototxt.")
@_preprocessing_options
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
@click.option("--gpu", default=None, help="-1 for CPU or a device id.")
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

    _select_device(gpu)
    paths = prediction.find_images(inputs)
    if not paths:
        raise DataError(f"no image files in {', '.join(inputs)}")
    net, settings, labels = prediction.open_model(
        model, weights, labels_file, output_blob,
        **_preprocessing(mean_file, mean_values, scale, raw_scale, channel_order, image_dims))
    predictor = prediction.Predictor(net, settings, labels, batch_size=batch_size,
                                     output=output_blob, oversample=oversample)
    skipped = []

    def on_skip(path, reason):
        skipped.append(path)
        click.echo(f"netforge: warning: skipped {reason}", err=True)

    progress = _make_bar_callback("predicting") if len(paths) > batch_size else None
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


@cli.command(name="time")
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Net prototxt.")
@click.option("--weights", default=None, help="Optional weights (.caffemodel or .h5).")
@click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False),
              default="TRAIN", show_default=True, help="Phase of the net (Caffe's default).")
@click.option("--gpu", default=None, help="-1 for CPU or a device id.")
@click.option("--level", type=int, default=0, show_default=True)
@click.option("--stage", default="", help="Comma-separated NetState stages.")
def time_command(model, weights, iterations, phase, gpu, level, stage):
    """Benchmark a net as `caffe time`: per-layer forward and backward ms, and totals."""
    from netforge.inspect.timing import format_table, time_net
    from netforge.net import Net

    _select_device(gpu)
    net = Net(model, phase.upper(), weights=weights, level=level,
              stages=[s for s in stage.split(",") if s])
    try:
        report = time_net(net, iterations, progress=_make_bar_callback("timing"))
    finally:
        net.close()
    click.echo(format_table(report))


@cli.command()
@click.argument("net", type=click.Path(exists=True, dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--rankdir", type=click.Choice(["LR", "TB", "BT", "RL"], case_sensitive=False),
              default="LR", show_default=True, help="Direction of the graph.")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST", "ALL"], case_sensitive=False),
              default="ALL", show_default=True, help="Which phase's layers to draw.")
def draw(net, output, rankdir, phase):
    """Draw a net: OUTPUT .dot (always), or .svg/.png/.pdf through Graphviz's `dot`."""
    from netforge.inspect.draw import draw_net_to_file

    click.echo(f"wrote {draw_net_to_file(net, output, rankdir=rankdir, phase=phase)}")


@cli.command(name="export-onnx")
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


if __name__ == "__main__":  # pragma: no cover
    main()
