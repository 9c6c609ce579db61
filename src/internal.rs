//! `InternalError`: a broken invariant inside quotaflow, a bug to report rather than
//! something a user caused. The lowest layer, so every other one may return it.

/// A broken invariant inside quotaflow: a bug to report, not something a user caused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("internal error (this is a bug in quotaflow, please report it): {message}")]
pub struct InternalError {
    pub message: String,
}

impl InternalError {
    pub fn new(message: impl Into<String>) -> InternalError {
        InternalError {
            message: message.into(),
        }
    }
}
