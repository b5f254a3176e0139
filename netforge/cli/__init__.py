"""The ``netforge`` command line (click): parses flags, calls the library, formats output."""

from netforge.cli.main import main

__all__ = ["main"]
