"""`python -m launch.cli ARGS`: the `sllm` command."""

from launch.cli import main

main()
