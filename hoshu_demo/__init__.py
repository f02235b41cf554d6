"""The all-in-one demo (``./run demo``): broker, gateway and simulated laboratory."""
