"""`python -m ewcexp.report DIR` (the `ewcexp-report` command): the report over a sweep's or
a folder's runs, which `ewcexp.reporting.report` writes."""

from ewcexp.reporting.report import job_statuses, logged_error, main

__all__ = ["job_statuses", "logged_error", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
