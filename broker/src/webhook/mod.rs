//! Webhook delivery, on the leader. The events themselves are replicated state: the
//! queue core files them in its outbox (`queue/outbox.rs`) when a job succeeds or dies.
//!
//! | file | what |
//! | --- | --- |
//! | `delivery.rs` | the leader's loop: send due events, report the outcome through the log |
//! | `client.rs` | the http/https client (rustls, system roots + `--webhook-ca`) |
//! | `target.rs` | which addresses a webhook may reach (checked after DNS resolution) |

pub mod client;
pub mod delivery;
pub mod target;

pub use delivery::run;
