"""``netforge compress``: prune, share and Huffman-code a trained net into an .nfz file
(or, with --sensitivity, measure each layer's accuracy against its sparsity)."""

from __future__ import annotations

import logging

import click

from netforge.errors import ConfigError

log = logging.getLogger("netforge")


def _first_scalar_output(results: list[dict]) -> str | None:
    for result in results:
        for name, value in result.items():
            if isinstance(value, float) and "loss" not in name:
                return name
    return None


def _stage_table(run) -> str:
    lines = []
    for r in run.results:
        outputs = ", ".join(f"{k} = {v:.4f}" for res in r.outputs for k, v in res.items()
                            if isinstance(v, float))
        lines.append(f"{r.stage:<22} kept {r.kept:>8} of {r.total:<8} "
                     f"({r.total / max(r.kept, 1):5.1f}x fewer)  {outputs}")
    return "\n".join(lines)


def _low_rank(trainer, text, output, finetune_iter, base_lr) -> None:
    from pathlib import Path

    from google.protobuf import text_format

    from netforge.deploy.compress import lowrank
    from netforge.deploy.compress.recipe import finetune, parse_layer_values
    from netforge.files import atomic_write_bytes

    default, targets = parse_layer_values(text, float, "--low-rank")
    if default is not None or not targets:
        raise ConfigError("--low-rank takes LAYER=E or LAYER=R items, one per layer")
    new, factors, param = lowrank.low_rank_solver(trainer, targets)
    try:
        new.test_all()
        before = new.test_results
        finetune(new, finetune_iter, base_lr)
        new.test_all()
        for name, f in factors.items():
            click.echo(f"{name}: rank {f.rank}, {f.params_before} -> {f.params_after} params "
                       f"({f.params_before / f.params_after:.1f}x fewer)")
        click.echo(f"after factorising: {before}; after {finetune_iter} finetune iterations: "
                   f"{new.test_results}")
        new.net.save(output)
        model = Path(output).with_suffix(".prototxt")
        atomic_write_bytes(model, text_format.MessageToString(param).encode())
        click.echo(f"wrote {output} and {model}")
    finally:
        new.close()


def _int8(trainer, model, weights, int8_path, calibration_iter) -> None:
    from pathlib import Path

    from netforge.deploy.compress import int8
    from netforge.deploy.onnx_export import export_onnx
    from netforge.net import Net

    float_path = Path(int8_path).with_suffix(".float.onnx")
    deploy = Net(model, "test", weights=weights)
    try:
        export_onnx(deploy, float_path)
    finally:
        deploy.close()
    calibration, _ = int8.dataset_batches(trainer.net, calibration_iter)
    int8.quantize_qdq(str(float_path), int8_path, calibration)
    inputs, labels = int8.dataset_batches(trainer.test_nets[0], trainer.param.test_iter[0])
    result = int8.evaluate(str(float_path), int8_path, inputs, labels)
    click.echo(result.format())
    click.echo(f"wrote {int8_path} (and the float model {float_path})")


@click.command()
@click.option("--solver", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Solver prototxt: its train net retrains, its test net scores each stage.")
@click.option("--weights", required=True, help="The trained weights (.caffemodel, .h5, .nfz).")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="The compressed weights to write (.nfz).")
@click.option("--sparsity", default=None,
              help="Fraction of weights to prune: F for every weighted layer, or LAYER=F,...")
@click.option("--bits", default=None,
              help="Weight-sharing bits (2^N centroids): N, or LAYER=N,...")
@click.option("--finetune-iter", type=click.IntRange(min=0), default=0, show_default=True,
              help="Retraining iterations after each stage.")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A CompressionRecipe prototxt (stages, per-layer targets) instead of flags.")
@click.option("--sensitivity", is_flag=True,
              help="Only measure accuracy against sparsity for each layer pruned alone.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="With --sensitivity: also draw the curves (.png, .svg).")
@click.option("--int8", "int8_path", type=click.Path(dir_okay=False), default=None,
              help="Post-training int8: write the deploy net (--model) quantized as a QDQ ONNX "
                   "file, calibrated on the train net's batches, scored on the test net's.")
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --int8: the deploy prototxt to export.")
@click.option("--calibration-iter", type=click.IntRange(min=1), default=10, show_default=True,
              help="With --int8: train-net batches that calibrate the activation ranges.")
@click.option("--low-rank", "low_rank", default=None,
              help="SVD-factorise layers: LAYER=E (keep energy fraction E of Σs²) or LAYER=R "
                   "(rank R > 1),...; --output gets the weights (.caffemodel) and a .prototxt "
                   "of the factorised net beside it.")
@click.option("--base-lr", type=float, default=0.0,
              help="With --low-rank: the finetune's base_lr (0: the solver's).")
@click.option("--gpu", default=None, help="-1 for CPU or a device id.")
def compress(solver, weights, output, sparsity, bits, finetune_iter, recipe, sensitivity,
             plot_path, int8_path, model, calibration_iter, low_rank, base_lr, gpu):
    """Deep Compression of a trained net: pruning with retraining, k-means weight sharing with
    centroid retraining, Huffman-coded sparse storage (.nfz); prints the sizes per layer."""
    from netforge import backend
    from netforge.deploy.compress import recipe as recipes
    from netforge.deploy.compress import sensitivity as sens
    from netforge.deploy.compress import storage
    from netforge.nfz import write_nfz
    from netforge.train.solver import Solver

    if sensitivity and (output or recipe or sparsity or bits):
        raise ConfigError("--sensitivity only measures: drop --output/--recipe/--sparsity/--bits")
    if int8_path and (output or recipe or sparsity or bits or sensitivity):
        raise ConfigError("--int8 quantizes the --weights as they are: drop the other modes")
    if int8_path and not model:
        raise ConfigError("--int8 needs --model DEPLOY.prototxt (the net to export)")
    if low_rank and (recipe or sparsity or bits or sensitivity or int8_path or not output):
        raise ConfigError("--low-rank writes --output OUT.caffemodel on its own: drop the "
                          "other modes")
    if not sensitivity and not int8_path and not low_rank:
        if not output:
            raise ConfigError("give --output OUT.nfz (or --sensitivity)")
        if recipe and (sparsity or bits):
            raise ConfigError("give either --recipe or --sparsity/--bits, not both")
        plan = recipes.load_recipe(recipe) if recipe else recipes.recipe_from_flags(
            sparsity, bits, finetune_iter)
    if gpu is None or gpu.strip() == "-1":
        backend.set_mode_cpu()
    else:
        try:
            backend.set_device(int(gpu))
        except ValueError:
            raise ConfigError(f'--gpu must be -1 or a device id, got "{gpu}"') from None
        backend.set_mode_gpu()

    trainer = Solver(solver, metrics=False)
    # compress tests after each stage itself and writes only OUTPUT: no periodic tests or
    # snapshots from the solver file.
    trainer.param.test_interval = 0
    trainer.param.snapshot = 0
    try:
        if not trainer.test_nets:
            raise ConfigError(f"{solver}: compress needs a test net to score the stages")
        for path in (w for w in weights.split(",") if w):
            trainer.net.copy_from(path)
        if low_rank:
            _low_rank(trainer, low_rank, output, finetune_iter, base_lr)
            return
        if int8_path:
            _int8(trainer, model, weights, int8_path, calibration_iter)
            return
        if sensitivity:
            table = sens.sensitivity(trainer)
            first = next(iter(table.values()))[0][1]
            name = _first_scalar_output([first]) or next(iter(first))
            click.echo(sens.format_table(table, name))
            if plot_path:
                sens.plot(table, name, plot_path)
                click.echo(f"wrote {plot_path}")
            return
        run = recipes.run_recipe(trainer, plan)
        compressed, rows = storage.compress_net(trainer.net, run.sharing)
        size = write_nfz(output, compressed)
        click.echo(_stage_table(run))
        click.echo(storage.format_report(rows, size, storage.caffemodel_size(trainer.net)))
        click.echo(f"wrote {output}")
    finally:
        trainer.close()
