//! The host's writes on [`Command`]: creating, updating, activating, deactivating and
//! deleting relays, each checked with the rules a sync applies and answering a
//! [`HostError`]; and [`Command::outcomes`], how a host learns what became of them.

use super::*;

impl Command {
    /// Subscribes to the sync outcomes recorded from now on: each relay's sync, deletion
    /// or failure, in the order they were committed. This is how a host that runs the worker
    /// ([`crate::Infra`]) learns what became of its changes, without polling, and how a host
    /// whose worker runs in another process (the daemon) does: from the first subscription
    /// on, the store follows what other processes commit ([`StoreOptions::feed_interval`]),
    /// so an outcome recorded anywhere arrives here within about that interval.
    ///
    /// ```no_run
    /// # fn example(store: zooid_sync::Store) -> Result<(), Box<dyn std::error::Error>> {
    /// # let settings = zooid_sync::RelaySettings::default();
    /// let outcomes = store.command.outcomes(); // before the change, so none is missed
    /// store.command.create_relay("alpha", &settings)?;
    /// let outcome = outcomes.wait_for("alpha", std::time::Duration::from_secs(30))?;
    /// println!("alpha: {:?}", outcome.kind);
    /// # Ok(())
    /// # }
    /// ```
    pub fn outcomes(&self) -> Outcomes {
        let outcomes = Outcomes::new(self.notify.subscribe_to(outcomes::is_outcome));
        self.follow_other_writers();
        outcomes
    }

    /// Host side: adds a relay (pending, revision 1) and its `create_relay` activity, in one
    /// transaction. Its settings are checked first with the rules a sync applies before
    /// sending ([`HostError::InvalidField`]); a relay with this id must not exist
    /// ([`HostError::RelayExists`]).
    pub fn create_relay(
        &self,
        id: &str,
        settings: &RelaySettings,
    ) -> std::result::Result<Activity, HostError> {
        settings.check(id)?;
        self.check_zooid(id, settings)?;
        self.host_write(
            id,
            Write::Create {
                id: id.to_string(),
                settings: settings.clone(),
                zooid_column: self.db.relay_zooid,
            },
        )
    }

    /// Host side: replaces a relay's settings; it becomes pending at a new revision. Checked
    /// like [`create_relay`](Self::create_relay); the relay must exist
    /// ([`HostError::UnknownRelay`]).
    pub fn update_relay(
        &self,
        id: &str,
        settings: &RelaySettings,
    ) -> std::result::Result<Activity, HostError> {
        settings.check(id)?;
        self.check_zooid(id, settings)?;
        self.host_write(
            id,
            Write::Update {
                id: id.to_string(),
                settings: settings.clone(),
                zooid_column: self.db.relay_zooid,
            },
        )
    }

    /// A relay's `zooid` names a zooid (`ZOOID_INSTANCES`' names), or is empty for
    /// `ZOOID_API_URL`'s; naming one needs the relay table's `zooid` column. (Whether a zooid
    /// of that name is configured is the worker's to say: it may be added later.)
    fn check_zooid(&self, id: &str, settings: &RelaySettings) -> Result<(), HostError> {
        let invalid = |problem: &str| HostError::InvalidField {
            id: id.to_string(),
            field: "zooid",
            problem: problem.to_string(),
        };
        match settings.zooid.as_str() {
            "" => Ok(()),
            _ if !self.db.relay_zooid => Err(invalid(
                "is set, but the relay table has no zooid column: add it (ALTER TABLE relay \
                 ADD COLUMN zooid TEXT NOT NULL DEFAULT '') to sync relays to several zooids",
            )),
            name if crate::env::is_zooid_name(name) => Ok(()),
            _ => Err(invalid(
                "must be empty or a zooid's name: 1 to 32 of a-z, 0-9 and - (ZOOID_INSTANCES)",
            )),
        }
    }

    /// A host's write, its activity, or what went wrong in the host's terms.
    fn host_write(&self, id: &str, write: Write) -> std::result::Result<Activity, HostError> {
        self.write(write)
            .and_then(Applied::activity)
            .map_err(|e| HostError::classify(id, e))
    }

    /// Host side: deletes the relay's row and appends its `delete_relay` activity, in one
    /// transaction; zooid-sync then deletes the relay at zooid. A relay created again under
    /// the same id later is a new relay (created at zooid with a new secret).
    pub fn delete_relay(&self, id: &str) -> std::result::Result<Activity, HostError> {
        self.host_write(id, Write::Delete { id: id.to_string() })
    }

    /// Host side: sets the relay's status to `active`; it becomes pending at a new revision.
    pub fn activate_relay(&self, id: &str) -> std::result::Result<Activity, HostError> {
        self.set_status(id, RelayStatus::Active, activity_type::ACTIVATE_RELAY)
    }

    /// Host side: sets the relay's status to `inactive` (zooid stops serving it); it becomes
    /// pending at a new revision.
    pub fn deactivate_relay(&self, id: &str) -> std::result::Result<Activity, HostError> {
        self.set_status(id, RelayStatus::Inactive, activity_type::DEACTIVATE_RELAY)
    }

    fn set_status(
        &self,
        id: &str,
        status: RelayStatus,
        activity: &'static str,
    ) -> std::result::Result<Activity, HostError> {
        let write = Write::SetStatus {
            id: id.to_string(),
            status,
            activity,
        };
        self.host_write(id, write)
    }
}
