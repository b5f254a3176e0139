"""``netforge upgrade``: Caffe's upgrade_net_proto_text / _binary and
upgrade_solver_proto_text in one command."""

from __future__ import annotations

import click


@click.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing DEST.")
def upgrade(source, dest, overwrite):
    """Rewrite a V0/V1 net (prototxt or .caffemodel) or an old solver in today's format."""
    import os

    from netforge.config.rewrite import upgrade_text_file
    from netforge.errors import ConfigError
    from netforge.files import atomic_write_bytes, is_text_file
    from netforge.weights import read_caffemodel

    if os.path.exists(dest) and not overwrite:
        raise ConfigError(f"{dest} already exists; pass --overwrite to replace it")
    if is_text_file(source):
        kind = upgrade_text_file(source, dest)
    else:  # a .caffemodel: read_caffemodel upgrades V0/V1 layers, weights kept
        atomic_write_bytes(dest, read_caffemodel(source).SerializeToString())
        kind = "weights"
    click.echo(f"wrote {dest} (the {kind} of {source}, upgraded)")
