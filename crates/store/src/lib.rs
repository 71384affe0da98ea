//! Persistence for Keypost: the storage traits every other crate talks to, and the embedded
//! SQLite backend behind them.
//!
//! `store` owns *where* data lives, never *what it means*: it knows no protocol and enforces no
//! policy. Callers inject the current time (unix seconds), so nothing here reads a clock.
//!
//! ```text
//!   identity ─┐
//!   tokens  ──┼──> Arc<dyn Store> ──> SqliteStore (WAL, versioned migrations)
//!   keys    ──┤                        (PostgreSQL slots in behind the same traits)
//!   audit   ──┘
//! ```
//!
//! The traits are split by subject ([`RealmStore`], [`AccountStore`], [`ClientStore`],
//! [`KeyStore`], [`LedgerStore`], [`SessionStore`], [`AuditStore`]); [`Store`] is all of them.
//! Every method is synchronous: SQLite calls take microseconds, and async callers run whole
//! units of work on a blocking thread instead of awaiting each statement.
//!
//! [`open`] chooses the backend from a [`StoreConfig`]. What every backend promises beyond the
//! signatures (the group-commit contract, [`GENERATIONS_STALE_AFTER`]) is written on the traits,
//! and checked by the contract suite (`contract`, compiled for tests and with the
//! `contract-tests` feature) that every backend runs.
#![forbid(unsafe_code)]

mod backend;
mod blob;
pub mod chain;
pub mod clock;
mod completion;
#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;
mod email_query;
mod error;
mod ids;
mod model;
mod sqlite;
mod traits;

pub use backend::{StoreConfig, open};
pub use blob::{BlobStore, FsBlobStore, blob_id};
pub use completion::Completion;
pub use email_query::{
    EmailCondition, EmailFilter, EmailQuery, EmailSort, QueryPage, SortKey, base_subject,
};
pub use error::Error;
pub use ids::{
    AccountId, BlobId, ClientId, EmailId, IdError, IdentityId, Jti, Kid, MailboxId, RealmId,
    SessionId, SubmissionId, ThreadId, push_jti_time_prefix,
};
pub use model::*;
pub use sqlite::SqliteStore;
pub use traits::*;

/// Result alias for storage operations.
pub type Result<T> = std::result::Result<T, Error>;
