"""The repository's own result-making tools (not installed with hemaedge: the wheel ships
`hemaedge bench`, not these). They run from a checkout with the editable install:
`python -m hemaedge.benchmarks.tools.run_all --list`. See docs/bench.md."""
