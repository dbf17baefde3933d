//! End-to-end tests; see tests/main.rs.
