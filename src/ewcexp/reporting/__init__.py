"""Layer 5, reporting: what a run reports. Its record (`record`), the metrics and statistics
computed from it (`metrics`, `statistics`, `continual`), `results.json` (`results`), the
figures (`figures`), the loggers (`loggers`), and the report over many runs (`report`)."""
