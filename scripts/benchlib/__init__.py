"""The benchmarks behind scripts/bench.py, which parses the command line: `common` (the results
file, subprocesses, test inputs), then one module per family of benchmarks."""
