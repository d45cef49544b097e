//! The socket load-balancing datapath. Not built yet.
