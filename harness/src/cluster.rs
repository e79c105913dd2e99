//! The test cluster entry point.
