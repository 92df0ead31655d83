"""Entry point for python -m runner."""

import os
import sys

from runner.cli import main

try:
    sys.exit(main())
except BrokenPipeError:
    # the reader went away (`python -m runner matrix.yaml --list | head`): stop quietly, as
    # command-line tools do, instead of a traceback; redirect stdout so the exit flush cannot fail
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)
