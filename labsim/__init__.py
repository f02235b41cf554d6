"""The simulated laboratory: instruments on loopback for the demo and the tests."""
