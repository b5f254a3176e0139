"""``netforge serve``: the web dashboard (netforge.serve) on uvicorn."""

from __future__ import annotations

import click

from netforge.errors import ConfigError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=5000, show_default=True)
@click.option("--workspace", type=click.Path(file_okay=False), default="netforge-workspace",
              show_default=True,
              help="The folder the server keeps datasets and jobs in, and the only one it "
                   "reads image folders from.")
@click.option("--token", default=None,
              help='Require this token on every request ("generate": make one and print it).')
@click.option("--max-upload-mb", type=click.FloatRange(0.01, 4096), default=32.0,
              show_default=True, help="Largest request body accepted.")
def serve(host, port, workspace, token, max_upload_mb):
    """Web dashboard: datasets, live training jobs, classification (a DIGITS for netforge)."""
    try:
        from netforge.serve.app import run
    except ImportError as exc:  # the web stack is an optional extra
        raise ConfigError(f"netforge serve needs the serve extra (pip install "
                          f"'netforge[serve]'): {exc}") from None

    def ready(active_token):
        where = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
        if active_token:
            click.echo(f"netforge serve: token {active_token}")
            where += f"?token={active_token}"
        click.echo(f"netforge serve: {where} (workspace {workspace}); Ctrl-C stops", err=True)

    run(workspace, host=host, port=port, token=token,
        max_upload_bytes=int(max_upload_mb * (1 << 20)), on_ready=ready)
