"""Hand-run benchmarks: numbers for humans to read, never assertions for CI (see `bench/README.md`)."""
