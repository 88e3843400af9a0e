"""asv benchmarks for numbabn (see the README section "Benchmarks")."""
