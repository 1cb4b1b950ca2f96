"""One file per claim about normalization: its sweep (`get_sweep(arg)`; `:smoke` gives 2 runs of
a few steps for the test suite, `:full` the GPU/TFDS scale) and its verdict rule, which
`python -m experiments.findings` applies to the numbers to write experiments/results/FINDINGS.md."""
