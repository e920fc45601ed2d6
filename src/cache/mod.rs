//! The artifact cache: content-addressed entries, their keys and digests, durable writes, journals and run records.

pub mod atomic;
pub mod digest;
pub mod hash_memo;
pub mod journal;
pub mod key;
pub mod runlog;
pub mod store;
