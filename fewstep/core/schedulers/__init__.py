"""One algorithm per file: tcd.py, lcm.py, on the shared base.py."""
