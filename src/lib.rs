//! multiproc: Python's `multiprocessing` model for Rust.
