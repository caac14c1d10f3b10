//! The worker.
pub mod retry;
