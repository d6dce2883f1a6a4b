"""Layer 7, the app: what a user calls. The `ewcexp` command and `python -m ewcexp` (`main`),
the checks on a command line before Hydra runs anything (`command_line`) over the configs
its jobs will have (`compose`), and `ewcexp.run` for notebooks (`api`)."""
