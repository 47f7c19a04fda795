//! End-to-end test suites for edgesync live in `tests/tests/`. This library is empty on
//! purpose: shared harness code (brokers, fault proxy, process control) joins it with issue #4.
