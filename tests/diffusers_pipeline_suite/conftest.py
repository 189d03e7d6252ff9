"""The vendored diffusers tests are not collected on their own: they would test diffusers' classes alone.

tests/test_diffusers_pipeline_suite.py runs them through diffusers and fewstep (see README.md here)."""

collect_ignore_glob = ["*.py", "*/*.py", "*/*/*.py"]
