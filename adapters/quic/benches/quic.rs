//! Benchmarks (placeholder).

fn main() {}
