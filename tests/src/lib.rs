//! Shared harness for Berth black-box tests.
