"""Speed and quality benchmarks: each prints a table and writes JSON (results in docs/)."""
