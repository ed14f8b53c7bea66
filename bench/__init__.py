"""Benchmarks of the kit against raw vLLM: run `make bench`, or one script with
`.venv/bin/python -m bench.<name> [--quick] [--model SPEC] [--json OUT]`.

Every script measures its side-by-side variants in one run, alternating them, and
prints a table and `ratio` lines with the target and PASS/FAIL. See docs/BENCHMARKS.md.
"""
