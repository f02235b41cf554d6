"""The gateways' reverse tunnels: the endpoint they dial, and the route to instruments."""
