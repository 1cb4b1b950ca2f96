"""One sweep per claim of issue 9 (work in progress: definitions and smoke tests exist; the
full runs, reports and FINDINGS.md do not yet). Each file's `get_sweep('smoke')` gives 2 runs of
a few steps for the test suite."""
