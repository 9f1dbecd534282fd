"""`python -m jupyter_chatbridge.server.cli`: the same command as `jupyter chatbridge`."""

from . import main

main()
