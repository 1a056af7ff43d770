//! Opening the Raft log of a data directory, importing it from the redb file of earlier
//! builds (`raft-log.redb`) once: entries, vote, committed and purged ids are written to
//! `raft-log.importing/`, made durable, renamed to `raft-log/` (so a crash mid-import
//! leaves the old log in charge), and the old file is renamed to `raft-log.redb.migrated`.

use super::{LogMeta, LogStore, TypeConfig};
use crate::error::MetaError;
use openraft::{Entry, LogId, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use tracing::info;

const OLD_LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_logs");
const OLD_STORE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_store");

/// Opens `<data_dir>/raft-log/`, first importing `<data_dir>/raft-log.redb` if only that exists.
pub fn open_log(data_dir: &Path) -> Result<LogStore, MetaError> {
    let new = data_dir.join("raft-log");
    let old = data_dir.join("raft-log.redb");
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| MetaError::Io { path, source }
    };
    if old.exists() {
        if !new.exists() {
            let staging = data_dir.join("raft-log.importing");
            if staging.exists() {
                std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
            }
            let (entries, meta) = read_redb_log(&old)?;
            let n = entries.len();
            LogStore::open(&staging)?.import(entries, meta)?;
            std::fs::rename(&staging, &new).map_err(io(&new))?;
            sync_dir(data_dir)?;
            info!(entries = n, from = %old.display(), to = %new.display(), "imported the Raft log from redb");
        }
        // The import is complete once `raft-log/` exists.
        let done = data_dir.join("raft-log.redb.migrated");
        std::fs::rename(&old, &done).map_err(io(&old))?;
        sync_dir(data_dir)?;
        info!(file = %done.display(), "old Raft log kept as");
    }
    LogStore::open(&new)
}

fn sync_dir(dir: &Path) -> Result<(), MetaError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|source| MetaError::Io { path: dir.display().to_string(), source })
}

/// Everything the redb log store of earlier builds held (read only, for the import).
pub(crate) fn read_redb_log(path: &Path) -> Result<(Vec<Entry<TypeConfig>>, LogMeta), MetaError> {
    let db = Database::open(path).map_err(|e| MetaError::storage("open old raft log", e))?;
    let txn = db.begin_read().map_err(|e| MetaError::storage("read old raft log", e))?;
    let store = txn.open_table(OLD_STORE).map_err(|e| MetaError::storage("read old raft log", e))?;
    let bad =
        |what: &str, e: postcard::Error| MetaError::Corrupt { table: "raft_store", reason: format!("{what}: {e}") };
    let get = |key: &str| -> Result<Option<Vec<u8>>, MetaError> {
        let v = store.get(key).map_err(|e| MetaError::storage("read old raft log", e))?;
        Ok(v.map(|g| g.value().to_vec()))
    };
    let mut meta = LogMeta::default();
    if let Some(b) = get("vote")? {
        meta.vote = Some(postcard::from_bytes::<Vote<u64>>(&b).map_err(|e| bad("vote", e))?);
    }
    if let Some(b) = get("committed")? {
        meta.committed = postcard::from_bytes::<Option<LogId<u64>>>(&b).map_err(|e| bad("committed", e))?;
    }
    if let Some(b) = get("last_purged")? {
        meta.purged = Some(postcard::from_bytes::<LogId<u64>>(&b).map_err(|e| bad("last_purged", e))?);
    }
    let logs = txn.open_table(OLD_LOGS).map_err(|e| MetaError::storage("read old raft log", e))?;
    let mut entries = Vec::new();
    for item in logs.iter().map_err(|e| MetaError::storage("read old raft log", e))? {
        let (k, v) = item.map_err(|e| MetaError::storage("read old raft log", e))?;
        let e: Entry<TypeConfig> = postcard::from_bytes(v.value())
            .map_err(|e| MetaError::Corrupt { table: "raft_logs", reason: format!("entry {}: {e}", k.value()) })?;
        entries.push(e);
    }
    Ok((entries, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::storage::RaftLogStorage;
    use openraft::RaftLogReader;

    /// `raft-log.redb` of a single-node `distfs local up` of the build before the segmented
    /// log (commit 372f96b), after 20 small files were created through `distfs bench`.
    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/raft-log-redb-v0.redb");

    #[tokio::test]
    async fn a_redb_log_of_the_previous_build_is_imported_once() {
        let tmp = tempfile::tempdir().expect("tmp");
        let old = tmp.path().join("raft-log.redb");
        std::fs::copy(FIXTURE, &old).expect("copy fixture");
        // What a crash in the middle of an earlier import left behind.
        std::fs::create_dir(tmp.path().join("raft-log.importing")).expect("mkdir");
        std::fs::write(tmp.path().join("raft-log.importing/00000000000000000000.seg"), b"junk").expect("junk");
        let (old_entries, old_meta) = read_redb_log(&old).expect("read the old log");
        assert!(old_entries.len() >= 40, "20 creates and their commits: {} entries", old_entries.len());
        assert_eq!(old_meta.vote, Some(Vote::new_committed(1, 1)));

        let mut log = open_log(tmp.path()).expect("import");
        assert!(!old.exists(), "the old file is renamed");
        assert!(tmp.path().join("raft-log.redb.migrated").exists());
        assert!(!tmp.path().join("raft-log.importing").exists());
        assert_eq!(log.read_vote().await.expect("vote"), old_meta.vote);
        assert_eq!(log.read_committed().await.expect("committed"), old_meta.committed);
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, old_meta.purged);
        assert_eq!(state.last_log_id, old_entries.last().map(|e| e.log_id));
        let all = log.try_get_log_entries(..).await.expect("read");
        assert_eq!(all, old_entries, "every entry comes over unchanged");
        drop(log);

        // The next start opens the new log and imports nothing again.
        let mut log = open_log(tmp.path()).expect("reopen");
        assert_eq!(log.try_get_log_entries(..).await.expect("read"), old_entries);
        assert_eq!(log.read_vote().await.expect("vote"), old_meta.vote);
    }
}
