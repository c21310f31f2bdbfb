//! The replication transport and wire format shared by primary, relays and standby.
