//! The feed publishes activity written by other connections, and each activity reaches the
//! bus exactly once, whichever process wrote it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::*;
use rusqlite::{params, Connection};
use zooid_sync::{Store, StoreOptions};

/// A store whose feed looks every 5 ms while activity flows.
fn fast_feed(path: &std::path::Path) -> Store {
    let options = StoreOptions {
        feed_interval: Duration::from_millis(5),
        ..StoreOptions::default()
    };
    Store::open_with(path, options).unwrap()
}

fn insert_elsewhere(conn: &Connection, id: &str) {
    conn.execute(
        "INSERT INTO activity (id, tenant_pubkey, created_at, activity_type, resource_type, resource_id)
         VALUES (?1, '', 0, 'update_relay', 'relay', 'alpha')",
        params![id],
    )
    .unwrap();
}

#[test]
fn every_activity_reaches_the_bus_exactly_once() {
    let (_dir, path) = temp_db();
    let store = fast_feed(&path);
    store
        .command
        .create_relay("before", &settings("before"))
        .unwrap(); // older than the feed
    let subscriber = store.command.notify.subscribe();
    store.command.follow_other_writers();

    let other = Connection::open(&path).unwrap();
    insert_elsewhere(&other, "elsewhere-1");
    store
        .command
        .create_relay("alpha", &settings("alpha"))
        .unwrap();
    insert_elsewhere(&other, "elsewhere-2");
    store.command.fail_relay_sync("alpha", "boom").unwrap();
    insert_elsewhere(&other, "sentinel");

    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sentinel = false;
    // Read until the sentinel, then drain whatever else the feed had already published.
    while !sentinel || !subscriber_is_idle(&subscriber) {
        let activity = subscriber
            .recv_deadline(deadline)
            .unwrap()
            .expect("timed out waiting for the feed");
        sentinel |= activity.id == "sentinel";
        *seen.entry(activity.id).or_default() += 1;
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert!(seen.contains_key("elsewhere-1") && seen.contains_key("elsewhere-2"));
}

/// No activity arrives within a short while (the feed's interval is 5 ms).
fn subscriber_is_idle(s: &zooid_sync::Subscriber) -> bool {
    match s.recv_deadline(Instant::now() + Duration::from_millis(100)) {
        Ok(None) => true,
        Ok(Some(a)) => panic!("published twice or late: {a:?}"),
        Err(e) => panic!("{e:?}"),
    }
}

/// After a quiet spell the feed stops looking and waits for the database's files to be
/// written: a lone change is still published at once, not at the next backstop look (two
/// seconds), however the change falls between them.
#[test]
fn a_lone_change_after_a_quiet_spell_is_published_at_once() {
    let (_dir, path) = temp_db();
    let store = fast_feed(&path);
    let subscriber = store.command.notify.subscribe();
    store.command.follow_other_writers();
    let other = Connection::open(&path).unwrap();
    for round in 0..3 {
        // A quiet second, and the back-off after it, leave the feed waiting for writes.
        std::thread::sleep(Duration::from_millis(1500));
        let id = format!("lone-{round}");
        insert_elsewhere(&other, &id);
        let written = Instant::now();
        let activity = subscriber
            .recv_deadline(written + Duration::from_secs(10))
            .unwrap()
            .expect("the change was never published");
        assert_eq!(activity.id, id);
        assert!(
            written.elapsed() < Duration::from_millis(700),
            "round {round}: published after {:?}",
            written.elapsed()
        );
    }
}
