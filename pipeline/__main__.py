"""``python -m pipeline``: the qwen-batch command line."""

from .cli import main

main(prog_name="qwen-batch")
