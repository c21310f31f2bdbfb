//! baton runtime (being built).

pub mod rpc;
