"""The vendored diffusers tests are not collected on their own: they would test diffusers' classes.

tests/test_diffusers_scheduler_suite.py runs them against fewstep's schedulers (see README.md here)."""

collect_ignore_glob = ["*.py", "*/*.py"]
