"""Load tests: real gunicorn workers under real HTTP load from locust, and proof that no count
is lost.

`python -m loadtests` (or `make loadtest`) runs every variant and writes its
report to loadtests/results/; see loadtests/README.md.
"""
