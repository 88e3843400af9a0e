"""asv benchmarks for numbabn (see the README sections "Performance" and "CUDA")."""
