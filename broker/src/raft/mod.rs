//! openraft glue: types, the redb log store, the state machine, the peer network
//! (client side in `network.rs` and `forward.rs`, server side in `service.rs`) and [`node::RaftNode`], which
//! the API calls to propose commands and to read linearizably.

pub mod addr;
pub mod forward;
pub mod log_store;
pub mod network;
pub mod node;
pub mod peer_auth;
pub mod proposer;
pub mod service;
pub mod snapshot;
pub mod state_machine;
pub mod time;
pub mod types;
pub mod wire;

pub use node::{NodeOptions, RaftNode};
