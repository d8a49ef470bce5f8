"""Search-quality benchmarks: the tiny81 tabular benchmark, regret tracking, `bench quality`."""
