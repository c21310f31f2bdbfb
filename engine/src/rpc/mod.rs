//! Management plane: an SPDK-compatible JSON-RPC 2.0 server, its method registry,
//! JSON config load/save and the client behind `baton rpc`.
//!
//! None of this runs on a data-path reactor. The binary builds a [`Registry`]
//! (engine methods via [`methods::register_rpcs`], then every other crate's
//! `register_rpcs`), optionally replays a start-up config with
//! [`config::load_config`], then moves the registry into a [`Server`] and calls
//! [`Server::poll`] in a loop on the management ("app") thread. Handlers reach
//! data-path reactors only by message (`engine::reactor::send_msg`).
//!
//! Wire format: exactly what SPDK's `scripts/rpc.py` speaks: JSON-RPC 2.0 request
//! objects (or batch arrays) streamed back to back on a Unix or TCP socket with no
//! delimiter; each response is one JSON value followed by a newline.
//! See `docs/rpc.md` for the method list.

pub mod client;
pub mod config;
pub mod docs;
pub mod error;
pub mod methods;
pub mod registry;
pub mod request;
pub mod server;
pub mod session;

pub use config::{load_config, save_config};
pub use error::RpcError;
pub use registry::{ConfigEntry, Registry, Reply};
pub use server::{Server, DEFAULT_SOCKET_PATH};
