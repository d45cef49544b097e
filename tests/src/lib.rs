//! End-to-end tests on the lab. Not built yet: they need the lab, the apiserver, the agent,
//! the eBPF datapath and the tunnel.
