"""Layer 1, configuration: what a run is told and what is checked before any work starts:
the types and ranges every key is declared with (`schema`), the checks on a composed config
(`checks`), the seeds of the run's random streams (`seeds`) and its folder (`folders`)."""

from ewcexp.config.checks import ConfigError

__all__ = ["ConfigError"]
