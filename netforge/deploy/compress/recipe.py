"""Compression recipes: the stages of a CompressionRecipe (proto/netforge.proto) run on a
solver — prune (iteratively, retraining between rounds), share (k-means, centroid
retraining), re-dense (DSD) — testing the net after each stage.

The command-line flags (--sparsity, --bits, --finetune-iter) build the same message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from netforge import backend, config
from netforge import netforge_pb2 as pb
from netforge.deploy.compress.sharing import WeightSharing
from netforge.deploy.compress.ternary import TernaryTraining
from netforge.errors import ConfigError
from netforge.train import pruning

log = logging.getLogger("netforge")

Kind = pb.CompressionStage


@dataclass
class StageResult:
    stage: str
    outputs: list[dict]  # the solver's test_results after the stage
    kept: int
    total: int


@dataclass
class CompressionRun:
    solver: object
    sharing: WeightSharing | None = None
    results: list[StageResult] = field(default_factory=list)


def load_recipe(path) -> pb.CompressionRecipe:
    with open(path) as handle:
        recipe = config.parse_text(handle.read(), pb.CompressionRecipe(), str(path))
    if not recipe.stage:
        raise ConfigError(f"{path}: the recipe has no stage")
    return recipe


def parse_layer_values(text: str | None, kind, what: str) -> tuple[object, dict]:
    """``F`` (a default for every layer) or ``LAYER=F,LAYER=F`` → (default, {layer: F})."""
    if not text:
        return None, {}
    default, per_layer = None, {}
    for item in text.split(","):
        name, sep, value = item.rpartition("=")
        try:
            number = kind(value)
        except ValueError:
            raise ConfigError(f'{what}: "{value}" is not a number (use F or LAYER=F,...)') from None
        if sep:
            per_layer[name.strip()] = number
        else:
            default = number
    return default, per_layer


def recipe_from_flags(sparsity: str | None, bits: str | None,
                      finetune_iter: int) -> pb.CompressionRecipe:
    recipe = pb.CompressionRecipe()
    for text, kind, number, stage_kind in ((sparsity, float, "sparsity", Kind.PRUNE),
                                           (bits, int, "bits", Kind.SHARE)):
        default, per_layer = parse_layer_values(text, kind, f"--{number}")
        if default is None and not per_layer:
            continue
        stage = recipe.stage.add(kind=stage_kind, finetune_iter=finetune_iter)
        if default is not None:
            setattr(stage, number, default)
        for name, value in per_layer.items():
            stage.layer.add(name=name, **{number: value})
    if not recipe.stage:
        raise ConfigError("nothing to do: give --sparsity and/or --bits, or --recipe")
    return recipe


def _targets(stage, layers: list[str], fields: tuple[str, ...]) -> dict[str, dict]:
    """{layer: {field: value}} for the layers the stage names, else its defaults for all."""
    targets = {}
    named = {t.name: t for t in stage.layer}
    unknown = sorted(set(named) - set(layers))
    if unknown:
        raise ConfigError(f"recipe names {', '.join(unknown)}, which are not weighted layers "
                          f"of the net ({', '.join(layers)})")
    for name in layers:
        source = named.get(name, stage)
        values = {f: getattr(source, f) for f in fields if source.HasField(f)}
        if values:
            targets[name] = values
    return targets


def _kept(solver) -> tuple[int, int]:
    kept = total = 0
    for i in pruning.prunable_params(solver.net).values():
        values = backend.to_host(solver.net.learnable_params[i].blob.data)
        kept += int(np.count_nonzero(values))
        total += values.size
    return kept, total


def finetune(solver, iterations: int, base_lr: float = 0.0) -> None:
    if iterations <= 0:
        return
    saved = solver.param.base_lr
    if base_lr:
        solver.param.base_lr = base_lr
    try:
        solver.step(iterations)
    finally:
        solver.param.base_lr = saved


def record(run: CompressionRun, stage: str) -> StageResult:
    run.solver.test_all()
    kept, total = _kept(run.solver)
    result = StageResult(stage, list(run.solver.test_results), kept, total)
    run.results.append(result)
    outputs = ", ".join(f"{k} = {v:.4g}" for r in result.outputs for k, v in r.items()
                        if isinstance(v, float))
    log.info("compress: after %s: %d of %d weights kept (%.1fx fewer); %s", stage, kept, total,
             total / max(kept, 1), outputs)
    return result


def _ternary(run, stage, layers) -> None:
    solver = run.solver
    names = [t.name for t in stage.layer] or layers
    unknown = sorted(set(names) - set(layers))
    if unknown:
        raise ConfigError(f"recipe names {', '.join(unknown)}, which are not weighted layers "
                          f"of the net ({', '.join(layers)})")
    index_of = pruning.prunable_params(solver.net)
    training = TernaryTraining(solver, stage.ternary_threshold)
    for name in names:
        training.add(index_of[name])
    training.install()
    finetune(solver, stage.finetune_iter, stage.base_lr)
    if run.sharing is None:
        run.sharing = WeightSharing(solver)  # the storage's view: 1-bit index maps
    for i, index_map in training.finish().items():
        run.sharing.adopt(i, index_map, bits=1)


def run_recipe(solver, recipe: pb.CompressionRecipe) -> CompressionRun:
    run = CompressionRun(solver)
    layers = list(pruning.prunable_params(solver.net))
    record(run, "dense")
    for n, stage in enumerate(recipe.stage):
        name = f"stage {n + 1} ({Kind.Kind.Name(stage.kind).lower()})"
        if stage.kind == Kind.PRUNE:
            targets = _targets(stage, layers, ("sparsity", "quality"))
            if not targets:
                raise ConfigError(f"{name}: no sparsity or quality given")
            rounds = max(stage.rounds, 1)
            for r in range(1, rounds + 1):
                # round r of R: a fraction r/R of the final sparsity (or quality)
                step = {layer: {k: v * r / rounds for k, v in t.items()}
                        for layer, t in targets.items()}
                pruning.prune(solver, step)
                finetune(solver, stage.finetune_iter // rounds, stage.base_lr)
        elif stage.kind == Kind.SHARE:
            targets = _targets(stage, layers, ("bits",))
            if not targets:
                raise ConfigError(f"{name}: no bits given")
            if run.sharing is None:
                run.sharing = WeightSharing(solver)
            index_of = pruning.prunable_params(solver.net)
            for layer, t in targets.items():
                run.sharing.share(index_of[layer], t["bits"])
            finetune(solver, stage.finetune_iter, stage.base_lr)
        elif stage.kind == Kind.TERNARY:
            _ternary(run, stage, layers)
        elif stage.kind == Kind.REDENSE:
            if run.sharing is not None:
                raise ConfigError(f"{name}: re-dense after weight sharing is not supported")
            pruning.unprune(solver)
            finetune(solver, stage.finetune_iter, stage.base_lr)
        else:
            raise ConfigError(f"{name}: unknown stage kind {stage.kind}")
        record(run, name)
    return run
