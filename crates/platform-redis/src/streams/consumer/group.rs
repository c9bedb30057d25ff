//! Creating a consumer's group: at the group's checkpoint when the stream has one, else where
//! the settings say. The worker does it before its first step and after a `NOGROUP`.

use fred::prelude::*;

use super::{StreamConsumer, add};
use crate::error::Result;
use crate::streams::settings::StartFrom;

impl StreamConsumer {
    /// Creates the group (and the stream) if missing, at the group's checkpoint when the
    /// stream's checkpoint hash has one, else where `start_from` says; an existing group is left
    /// as it is.
    pub async fn ensure_group(&self) -> Result<()> {
        let group = self.settings.group.as_str();
        let checkpoint: Option<String> =
            self.clients.primary().hget(&self.checkpoints_key, group).await?;
        let start = match checkpoint {
            Some(id) if is_entry_id(&id) => id,
            other => {
                if let Some(id) = other {
                    tracing::error!(stream = %self.settings.stream, group, checkpoint = %id, "group checkpoint is not an entry id; ignoring it");
                }
                match self.settings.start_from {
                    StartFrom::Beginning => "0".to_owned(),
                    StartFrom::New => "$".to_owned(),
                }
            }
        };
        let created: std::result::Result<(), fred::error::Error> =
            self.clients.primary().xgroup_create(&self.key, group, start.as_str(), true).await;
        match created {
            Ok(()) => {
                add(&self.counters.groups_created, 1);
                tracing::info!(stream = %self.settings.stream, group, start, "consumer group created");
                Ok(())
            }
            Err(error) if error.details().starts_with("BUSYGROUP") => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// `<ms>-<seq>`, as entry ids and checkpoints are written.
fn is_entry_id(id: &str) -> bool {
    id.split_once('-')
        .is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::is_entry_id;

    #[test]
    fn checkpoints_must_be_entry_ids() {
        assert!(is_entry_id("123-0"));
        assert!(is_entry_id("0-0"));
        assert!(!is_entry_id("123"));
        assert!(!is_entry_id("$"));
        assert!(!is_entry_id("a-1"));
    }
}
