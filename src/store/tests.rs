//! The store's unit tests.
use super::*;

#[test]
fn an_outcome_for_a_relay_deleted_since_it_was_read_marks_no_successor() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("z.db")).unwrap();
    let (q, c) = (&store.query, &store.command);
    let settings = RelaySettings {
        tenant_pubkey: "ab".repeat(32),
        schema: "alpha".into(),
        subdomain: "alpha".into(),
        ..RelaySettings::default()
    };
    c.create_relay("alpha", &settings).unwrap();
    let read = q.get_relay_for_sync("alpha").unwrap().unwrap();
    // While the create is in flight the host deletes the relay and creates it again: the
    // new row has revision 1 too.
    c.delete_relay("alpha").unwrap();
    c.create_relay("alpha", &settings).unwrap();
    let complete = |seen| {
        let (tx, rx) = crossbeam_channel::bounded(1);
        c.complete_relay_sync_then("alpha", read.relay.revision, seen, None, move |r| {
            tx.send(r.unwrap()).unwrap()
        });
        c.flush();
        rx.recv().unwrap()
    };
    assert_eq!(complete(read.seen), None, "the relay it read is gone");
    assert!(!q.get_relay("alpha").unwrap().unwrap().synced);
    let again = q.get_relay_for_sync("alpha").unwrap().unwrap();
    assert!(!again.ever_completed);
    assert_eq!(complete(again.seen), Some(true), "the successor's own sync");
    assert!(q.get_relay("alpha").unwrap().unwrap().synced);

    // A failure of the relay it read is not the successor's; nor is a failed deletion
    // once the relay was created again.
    let fail = |seen| {
        let (tx, rx) = crossbeam_channel::bounded(1);
        c.fail_relay_sync_then("alpha", "zooid answered 500", seen, None, move |r| {
            tx.send(r.unwrap()).unwrap()
        });
        c.flush();
        rx.recv().unwrap()
    };
    assert!(!fail(Some(read.seen)), "the relay it read is gone");
    c.delete_relay("alpha").unwrap();
    let deletion = q.deletion_pending("alpha").unwrap().expect("pending");
    assert!(
        fail(Some(deletion)),
        "the deletion's own failure is recorded"
    );
    c.create_relay("alpha", &settings).unwrap();
    assert!(
        !fail(Some(deletion)),
        "created again: the deletion's failure is moot"
    );
    assert_eq!(q.get_relay("alpha").unwrap().unwrap().sync_error, "");
}

#[test]
fn only_failures_that_pass_are_written_again() {
    let sqlite = |code: i32| {
        anyhow::Error::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
        .context("recording the sync of relay \"a\"")
    };
    for code in [
        rusqlite::ffi::SQLITE_BUSY,
        rusqlite::ffi::SQLITE_LOCKED,
        rusqlite::ffi::SQLITE_FULL,
        rusqlite::ffi::SQLITE_IOERR,
        rusqlite::ffi::SQLITE_READONLY,
        rusqlite::ffi::SQLITE_CANTOPEN,
        rusqlite::ffi::SQLITE_NOMEM,
    ] {
        assert!(passes(&sqlite(code)), "code {code}");
    }
    for code in [
        rusqlite::ffi::SQLITE_CONSTRAINT,
        rusqlite::ffi::SQLITE_ERROR,
    ] {
        assert!(!passes(&sqlite(code)), "code {code}");
    }
    assert!(!passes(&anyhow!("there is no relay")));
}

#[test]
fn kept_writes_back_off_and_are_due_as_soon_as_writes_pass() {
    let kept = |n: usize| {
        (0..n)
            .map(|i| Queued {
                write: Write::Answer {
                    request: i as i64,
                    outcome: "synced".into(),
                    detail: String::new(),
                },
                done: Done::Then(Box::new(|_| {})),
            })
            .collect::<Vec<_>>()
    };
    let mut q = WriteQueue::default();
    let before = Instant::now();
    q.keep_for_retry(kept(2), "database is locked");
    assert_eq!(q.backoff, WRITE_RETRY_BASE);
    assert!(q.retry_at.unwrap() >= before + WRITE_RETRY_BASE);
    let (since, error) = q.health.failing.clone().unwrap();
    assert_eq!(error, "database is locked");
    q.keep_for_retry(kept(1), "disk is full");
    assert_eq!(q.backoff, 2 * WRITE_RETRY_BASE, "doubles");
    assert_eq!(
        q.health.failing,
        Some((since, "disk is full".into())),
        "same start"
    );
    assert_eq!((q.health.failures, q.retry.len()), (3, 3));
    for _ in 0..20 {
        q.keep_for_retry(kept(1), "disk is full");
    }
    assert_eq!(q.backoff, WRITE_RETRY_CAP, "capped");
    q.writes_pass();
    assert!(q.health.failing.is_none());
    assert_eq!(q.backoff, Duration::ZERO);
    assert!(q.retry_at.unwrap() <= Instant::now(), "due at once");
    q.keep_for_retry(kept(1), "again");
    assert_eq!(q.backoff, WRITE_RETRY_BASE, "starts over");
}
