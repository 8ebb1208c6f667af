"""Modules of jobs outside `jobs/`, loaded through JOB_MODULES or `--jobs` (tests/test_extra_jobs.py)."""
