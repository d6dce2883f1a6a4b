"""ewcexp: continual-learning experiments with Elastic Weight Consolidation.

`ewcexp strategy=ewc lambda=400` on the command line; `ewcexp.run(["strategy=ewc"])` in Python.
"""

from importlib.metadata import version

from ewcexp.app.api import run

__version__ = version("ewcexp")
__all__ = ["__version__", "run"]
