"""Reference implementations of the runtime's ops (torch), shared by tests and benchmarks."""
