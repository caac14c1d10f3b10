//! How a thread that must keep moving says that it does: the small interface the store's
//! writer thread reports through, and the text of a panic. Low in the house so that the store
//! needs nothing of the metrics that read it ([`crate::metrics::Metrics`] implements
//! [`WriterWatch`]; `/healthz` and the watchdog read the metrics).

/// What the store's writer thread tells whoever watches it.
pub(crate) trait WriterWatch: Send + Sync {
    /// The writer thread starts: the guard, held for the thread's whole life, reports the
    /// thread's death if it ends with a panic.
    fn writer_started(&self) -> Box<dyn Send>;

    /// The writer starts (`true`) or ends (`false`) a commit.
    fn writer_busy(&self, busy: bool);
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::panic_message;

    #[test]
    fn a_panics_text_is_its_message_whatever_its_type() {
        let text = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(text.as_ref()), "plain");
        let formatted = std::panic::catch_unwind(|| panic!("{}", 42)).unwrap_err();
        assert_eq!(panic_message(formatted.as_ref()), "42");
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(other.as_ref()), "a panic without a message");
    }
}
