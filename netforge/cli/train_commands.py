"""``netforge train`` and ``netforge test``: a solver's training run, and scoring a model."""

from __future__ import annotations

import logging
import sys

import click

from netforge.cli.options import (
    bar_callback,
    gpu_option,
    netstate_options,
    select_device,
    split_stages,
)
from netforge.errors import ConfigError


@click.command()
@click.option("--solver", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Solver prototxt.")
@click.option("--weights", default=None,
              help="Pretrained weights to finetune from: W1[,W2...] copied in order by layer name.")
@click.option("--snapshot", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A .solverstate to resume from.")
@gpu_option(help="-1 for CPU, a device id, or several: a list 0,1 or all (one rank per GPU).")
@click.option("--sigint-effect", type=click.Choice(["stop", "snapshot", "none"]), default="stop",
              show_default=True, help="What Ctrl-C does.")
@click.option("--sighup-effect", type=click.Choice(["stop", "snapshot", "none"]),
              default="snapshot", show_default=True, help="What SIGHUP does.")
@click.option("--no-graph", is_flag=True, default=False,
              help="GPU: never capture the training step as a CUDA graph.")
@netstate_options
def train(solver, weights, snapshot, gpu, sigint_effect, sighup_effect, no_graph, level, stage):
    """Train the net of a solver file (with testing and snapshots)."""
    from netforge import config
    from netforge.cli import data_parallel
    from netforge.cli.progress import TrainingBar
    from netforge.train.solver import SignalRequests, Solver

    if weights and snapshot:
        raise ConfigError("give either --weights (finetune) or --snapshot (resume), not both")
    solver_param = config.load_solver_param(solver)
    if data_parallel.wants_several_gpus(gpu) and data_parallel.launch.rank_info().world == 1:
        sys.exit(data_parallel.launch_gpu_ranks(gpu, sys.argv[1:]))  # one rank per GPU
    job = data_parallel.join_job(gpu)  # None unless mpirun/srun started several ranks
    if job is None:
        select_device(gpu, solver_param)
    signals = SignalRequests(sigint_effect, sighup_effect)
    with data_parallel.ending_the_job_on_failure(job):
        trainer = Solver(solver, level=level, stages=split_stages(stage), signals=signals,
                         parallel=job, metrics=job is None or job.is_root,
                         no_graph=no_graph)
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
        with data_parallel.ending_the_job_on_failure(job):
            trainer.solve(resume_file=snapshot)
            if job:
                job.finish()
    finally:
        signals.uninstall()
        if bar:
            bar.close()
        trainer.close()
    if trainer.stop_requested:
        sys.exit(0 if (solver_param.snapshot_after_train or sigint_effect == "snapshot") else 1)


@click.command()
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Net prototxt (its TEST phase is used).")
@click.option("--weights", required=True, help="Trained weights (.caffemodel or .h5).")
@click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True)
@gpu_option()
@netstate_options
@click.option("--confusion", is_flag=True,
              help="Print per-class accuracy and the confusion matrix instead of the means.")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="Class names for --confusion, one a line (e.g. a dataset's labels.txt).")
def test(model, weights, iterations, gpu, level, stage, confusion, labels_file):
    """Score a trained model: mean of each net output over N batches."""
    from netforge.deploy.predict import warn_layers_without_weights
    from netforge.net import Net
    from netforge.train.evaluate import run_test

    select_device(gpu)
    net = Net(model, "test", weights=weights, level=level, stages=split_stages(stage))
    warn_layers_without_weights(net, weights)
    try:
        if confusion:
            from netforge.deploy.frozen import read_labels
            from netforge.inspect.confusion import confusion_of_net

            labels = read_labels(labels_file) if labels_file else []
            click.echo(confusion_of_net(net, iterations, labels,
                                        bar_callback("testing")).format_table())
            return
        means = run_test(net, iterations, progress=bar_callback("testing"))
    finally:
        net.close()
    for name, value in means.items():
        click.echo(f"{name} = {value:.6g}" if isinstance(value, float) else f"{name} = {value}")
