"""Several broker replicas: the tunnel registry, the peer link, failover."""
