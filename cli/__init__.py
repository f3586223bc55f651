"""The ``agent-router`` command line, above everything it calls: one module per command group.

- :mod:`cli.app`: the command tree and its entry point (``agent-router``, ``python -m cli``);
- :mod:`cli.train`: ``init``, ``train``, ``tune``, ``embed``;
- :mod:`cli.evaluate`: ``eval``, ``calibrate``;
- :mod:`cli.serve`: ``serve``;
- :mod:`cli.retrain`: ``retrain``;
- :mod:`cli.keys`: ``keys new``;
- :mod:`cli.data`: ``data convert``;
- :mod:`cli.agents`: ``agents serve`` and ``demo``;
- :mod:`cli.options`: options and settings the commands share.

A user's mistake (bad file, bad option, bad checkpoint) ends with one line ``error: ...`` on
stderr and exit code 2, never a traceback. Heavy imports happen inside the commands, so ``--help``
is quick. No other package imports this one.
"""
