//! perf harness (being built).
