//! rtmp-guard: an inline, RTMP-aware reverse proxy that enforces a streaming
//! host's acceptable-use rules in front of real media servers.
//!
//! A connection travels these stages, each a file with one job:
//!
//! ```text
//! accept ──▶ admit ──▶ handshake ──▶ connect ──▶ upstream ──▶ relay ──▶ report
//! accept.rs  admit/    handshake.rs  connect.rs  upstream.rs  relay.rs  report.rs
//! ```
//!
//! On an RTMPS listener, [`tls`] terminates TLS between admit and the
//! handshake; [`transport`] is what the stages read either way. The
//! upstream stage picks a server from its [`pool`], which [`health`]
//! checks.
//!
//! [`session`] runs them in order for one connection, handing on a
//! [`connection::Connection`] (the socket and its unread bytes) and a
//! [`context::Ctx`] (the guard, the config the session began with, the
//! client's address). A stage either returns a typed result or stops the
//! connection with a [`verdict::Block`].
//!
//! Below the stages, and importing nothing above them:
//! - [`rtmp`]: the sans-IO protocol (handshake, chunks, AMF0, commands,
//!   replies, PROXY headers);
//! - [`policy`]: decisions, with time passed in ([`policy::session`] is one
//!   session's rules as a state machine);
//! - [`verdict`]: the vocabulary of outcomes (`Stage`, `Reason`, `Block`,
//!   `Verdict`).
//!
//! Around them: [`config`], [`guard`] (shared state), [`server`] (start-up),
//! [`control`] (the operator's remedies and live sessions), [`admin`] (the
//! HTTP adapter for them), [`fleet`] (sharing them, and quotas, with other
//! guards through Redis), [`lifecycle`] (reload, drain), [`metrics`], [`refusals`] (the last
//! hour's refusals per reason, for the status page) and the logs.

pub mod accept;
pub mod admin;
pub mod admit;
pub mod audit;
pub mod callback;
pub mod config;
pub mod connect;
pub mod connection;
pub mod context;
pub mod control;
pub mod fleet;
pub mod fuzz;
pub mod guard;
pub mod handshake;
pub mod health;
pub mod kernel;
pub mod lifecycle;
pub mod line_writer;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod refusals;
pub mod relay;
pub mod report;
pub mod rtmp;
pub mod server;
pub mod session;
pub mod tls;
pub mod transport;
pub mod upstream;
pub mod verdict;
pub mod workers;

pub use guard::Guard;
pub use rtmp::proxy_protocol;
pub use server::{start, start_from, start_with, Running};
