//! Request handlers of deduplication (issue 10): fingerprint lookups and dedup commits.

use crate::service::Service;
use crate::state::dedup::{self, DedupCommand};
use crate::state::Command;
use distfs_proto::dedup::{DedupRequest, MAX_LOOKUP};
use distfs_proto::MetaResponse;
use distfs_types::{FsError, FsResult, Timestamp};

impl Service {
    pub(crate) async fn handle_dedup(&self, req: DedupRequest, now: Timestamp) -> FsResult<MetaResponse> {
        match req {
            DedupRequest::Lookup { fps } => {
                if fps.len() > MAX_LOOKUP {
                    return Err(FsError::TooBig { what: "fingerprint lookup".into(), len: fps.len(), max: MAX_LOOKUP });
                }
                // Not linearizable on purpose: the commit checks again inside the state machine.
                self.read_barrier().await?;
                let blocks = dedup::lookup(&self.store.read()?, &fps)?;
                Ok(MetaResponse::Fingerprints { blocks })
            }
            DedupRequest::CommitWrite { ino, slices, min_size, mtime, bad, fps } => {
                if !bad.is_empty() {
                    self.kick();
                }
                let cmd = DedupCommand::CommitWrite { ino, slices, min_size, mtime, bad, fps, now };
                Self::attr_of(self.write(Command::Dedup(cmd)).await?)
            }
        }
    }
}
