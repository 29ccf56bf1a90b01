"""Support shared by the test suite (tests/) and the load tests (loadtests/): never shipped."""
