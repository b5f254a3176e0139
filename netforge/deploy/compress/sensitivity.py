"""Pruning sensitivity (Han et al. 2015, Fig. 6): each weighted layer pruned alone to a series
of sparsities, without retraining, and the test net's outputs measured; the weights are put
back after each point."""

from __future__ import annotations

import logging

from netforge.train import pruning

log = logging.getLogger("netforge")

SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)


def sensitivity(solver, sparsities=SPARSITIES) -> dict[str, list[tuple[float, dict]]]:
    """{layer: [(sparsity, {output: mean of test net 0}), ...]}."""
    net = solver.net
    table = {}
    for layer, i in pruning.prunable_params(net).items():
        blob = net.learnable_params[i].blob
        saved = blob.data.copy()
        rows = []
        for s in sparsities:
            kept = pruning.magnitude_kept(blob.data, sparsity=s)
            blob.data *= blob.xp.asarray(kept.astype(blob.data.dtype))
            rows.append((s, solver.test(0)))
            blob.data[...] = saved
        table[layer] = rows
        log.info("sensitivity: %s done", layer)
    return table


def format_table(table, output: str) -> str:
    sparsities = [s for s, _ in next(iter(table.values()))]
    head = f"{'layer':<12}" + "".join(f"{s:>8.0%}" for s in sparsities)
    lines = [f"{output} of the test net at each sparsity (pruned alone, no retraining)", head]
    for layer, rows in table.items():
        lines.append(f"{layer:<12}" + "".join(f"{r.get(output, float('nan')):>8.4f}"
                                             for _, r in rows))
    return "\n".join(lines)


def plot(table, output: str, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from netforge.files import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    for layer, rows in table.items():
        ax.plot([100 * s for s, _ in rows], [r.get(output) for _, r in rows], marker="o",
                label=layer)
    ax.set_xlabel("weights pruned (%)")
    ax.set_ylabel(output)
    ax.set_title("pruning sensitivity (no retraining)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=str(path).rsplit(".", 1)[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
