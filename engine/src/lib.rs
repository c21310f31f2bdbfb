//! baton runtime (being built).
