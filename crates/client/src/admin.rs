//! Administration calls: membership of the metadata Raft group.

use crate::error::Result;
use crate::ns::expect_resp;
use crate::Client;
use distfs_proto::{MetaRequest, MetaResponse, MetaStatus};

impl Client {
    /// Raft state of the metadata group as the server answering sees it.
    pub async fn meta_status(&self) -> Result<MetaStatus> {
        let r = self.meta_call(MetaRequest::MetaStatus).await?;
        expect_resp!(r, MetaResponse::MetaStatus(s) => s, "MetaStatus")
    }

    /// Adds the metadata server at `addr` (started with `join = true`) as a voter.
    pub async fn add_meta_server(&self, addr: &str) -> Result<MetaStatus> {
        let r = self.meta_call(MetaRequest::AddMetaServer { addr: addr.to_string() }).await?;
        expect_resp!(r, MetaResponse::MetaStatus(s) => s, "AddMetaServer")
    }

    /// Removes metadata server `id` from the group.
    pub async fn remove_meta_server(&self, id: u64) -> Result<MetaStatus> {
        let r = self.meta_call(MetaRequest::RemoveMetaServer { id }).await?;
        expect_resp!(r, MetaResponse::MetaStatus(s) => s, "RemoveMetaServer")
    }
}
