"""``netforge summary``, ``time``, ``draw`` and ``plot``: looking at nets and training runs."""

from __future__ import annotations

import click

from netforge.cli import options


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Image to write (.png, .svg, .pdf).")
def plot(inputs, output):
    """Draw train loss, test outputs and lr from metrics files (.jsonl) or training logs."""
    from netforge.inspect.plot import plot_curves

    click.echo(f"wrote {plot_curves(inputs, output)}")


@click.command()
@click.argument("net", type=click.Path(exists=True, dir_okay=False))
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False),
              default="TEST", show_default=True, help="Which phase's layers to include.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Batch size for the input/data layers (default: as in the file).")
@options.netstate_options
def summary(net, phase, batch, level, stage):
    """Per layer: type, top shapes, parameter count and FLOPs; totals."""
    from netforge.inspect.summary import format_table, summary_of_file

    name, rows = summary_of_file(net, phase=phase.upper(), batch=batch, level=level,
                                 stages=options.split_stages(stage))
    click.echo(format_table(rows, title=f'Net "{name}" ({phase.upper()})'))


@click.command(name="time")
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Net prototxt.")
@click.option("--weights", default=None, help="Optional weights (.caffemodel or .h5).")
@click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False),
              default="TRAIN", show_default=True, help="Phase of the net (Caffe's default).")
@options.gpu_option()
@options.netstate_options
def time_command(model, weights, iterations, phase, gpu, level, stage):
    """Benchmark a net as `caffe time`: per-layer forward and backward ms, and totals."""
    from netforge.inspect.timing import caffe_totals, format_table, time_net
    from netforge.net import Net

    options.select_device(gpu)
    net = Net(model, phase.upper(), weights=weights, level=level,
              stages=options.split_stages(stage))
    try:
        report = time_net(net, iterations, progress=options.bar_callback("timing"))
    finally:
        net.close()
    click.echo(format_table(report))
    click.echo("\n".join(caffe_totals(report)))


@click.command()
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
