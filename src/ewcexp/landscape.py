"""`python -m ewcexp.landscape RUN_DIR...` (the `ewcexp-landscape` command): the loss landscape
of runs that share their seed and first task, which `ewcexp.app.landscape` draws."""

from ewcexp.app.landscape import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
