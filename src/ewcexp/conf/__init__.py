"""The configs Hydra composes (`pkg://ewcexp.conf`): config.yaml and one folder per group."""
