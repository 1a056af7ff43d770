//! Writes applied at most once, and storage-node registration tokens.
//!
//! `Command::Once` wraps a client's write with its request id (client, slot, seq; see
//! `distfs_proto::MetaRequest::Once`). `RESULTS` keeps, per (client, slot), the seq and
//! the encoded result of the last write applied in that slot. Applying a `Once`
//! (`StateStore::apply_entry`) first looks the slot up: the same seq is a retry and gets
//! the stored result without applying again (also when the retry was proposed while the
//! first attempt was still in the log); an older seq is a stale attempt of a call the
//! client has finished and is refused without applying; a newer one (or none) applies
//! the command and stores its result in the same transaction. Errors that tell the
//! client to retry (`Unavailable`, `NotLeader`) change nothing and are not stored.
//!
//! Bounds: at most `ONCE_SLOTS` results per client (a client holds one slot per call in
//! flight and reuses freed slots first), each at most `MAX_RESULT` bytes encoded; a client
//! not heard from for `CLIENT_TTL_SECS` (by the leader's timestamps in the commands, never
//! a clock read here) is dropped, at most `EXPIRE_PER_APPLY` of them per applied `Once`.
//!
//! `NODE_TOKENS` maps a storage node's registration token to the id it was given, so a
//! node whose `RegisterNode` answer was lost gets the same id again.

use super::*;
use distfs_proto::ONCE_SLOTS;
use redb::{ReadableTable, WriteTransaction};

/// (client, slot) -> `enc(Completed)`.
pub(crate) const RESULTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("once_results");
/// client -> when it was last heard from (leader's clock, seconds).
pub(crate) const CLIENTS: TableDefinition<u64, i64> = TableDefinition::new("once_clients");
/// (last heard from, client): the clients by age, to drop the idle ones.
pub(crate) const BY_AGE: TableDefinition<(i64, u64), ()> = TableDefinition::new("once_clients_by_age");
/// Registration token of a storage node -> its node id.
pub(crate) const NODE_TOKENS: TableDefinition<u128, u64> = TableDefinition::new("node_tokens");

/// A client silent this long loses its stored results: far longer than any client
/// retries one call (`MetaClient::deadline`, 15 s by default).
pub const CLIENT_TTL_SECS: i64 = 600;
/// Idle clients dropped per applied `Once`, at most (bounded work per entry).
pub const EXPIRE_PER_APPLY: usize = 4;
/// Largest stored result, encoded. Write results are an `Attr`, a node id or an error
/// naming a path; a larger one is stored as an `Internal` error saying so.
pub const MAX_RESULT: usize = 16 << 10;

/// The request id of one write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnceKey {
    pub client: u64,
    pub slot: u32,
    pub seq: u64,
}

/// The last write applied in one slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Completed {
    seq: u64,
    result: Result<CommandResult, FsError>,
}

/// What the table says about a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Applied already: its result.
    Done(FsResult<CommandResult>),
    /// Not applied yet: apply it.
    New,
    /// Refused without applying (a stale attempt, or an invalid id).
    Refused(FsError),
}

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(RESULTS)?;
    txn.open_table(CLIENTS)?;
    txn.open_table(BY_AGE)?;
    txn.open_table(NODE_TOKENS)?;
    Ok(())
}

/// Looks `key` up in a results table (of a read or a write transaction).
pub fn lookup(t: &impl ReadableTable<(u64, u32), &'static [u8]>, key: OnceKey) -> FsResult<Lookup> {
    if key.slot >= ONCE_SLOTS {
        return Ok(Lookup::Refused(FsError::Protocol {
            reason: format!("request slot {} out of range (a client has {ONCE_SLOTS})", key.slot),
        }));
    }
    let Some(g) = t.get((key.client, key.slot)).map_err(db_err)? else { return Ok(Lookup::New) };
    let c: Completed = dec("once_results", g.value())?;
    Ok(if c.seq == key.seq {
        Lookup::Done(c.result)
    } else if c.seq > key.seq {
        Lookup::Refused(FsError::invalid(format!(
            "request {}/{} is a stale retry: the client has since finished request {} in that slot; nothing was applied",
            key.client, key.seq, c.seq
        )))
    } else {
        Lookup::New
    })
}

/// The stored outcome of `key` as the state in `r` says (`None`: not applied yet).
pub fn applied(r: &redb::ReadTransaction, key: OnceKey) -> FsResult<Option<FsResult<CommandResult>>> {
    let t = r.open_table(RESULTS).map_err(db_err)?;
    Ok(match lookup(&t, key)? {
        Lookup::Done(res) => Some(res),
        Lookup::New | Lookup::Refused(_) => None,
    })
}

/// Stores the result of the write `key`, applied at `now`, and drops idle clients.
pub(super) fn record(
    txn: &WriteTransaction,
    key: OnceKey,
    now: Timestamp,
    result: &FsResult<CommandResult>,
) -> FsResult<()> {
    if matches!(result, Err(e) if e.retry() != distfs_types::error::Retry::Never) {
        return Ok(());
    }
    let mut value = enc(&Completed { seq: key.seq, result: result.clone() });
    if value.len() > MAX_RESULT {
        let reason =
            format!("the result of request {}/{} ({} bytes) was too large to keep", key.client, key.seq, value.len());
        value = enc(&Completed { seq: key.seq, result: Err(FsError::internal(reason)) });
    }
    let mut results = txn.open_table(RESULTS).map_err(db_err)?;
    results.insert((key.client, key.slot), value.as_slice()).map_err(db_err)?;
    let mut clients = txn.open_table(CLIENTS).map_err(db_err)?;
    let mut by_age = txn.open_table(BY_AGE).map_err(db_err)?;
    let seen = clients.insert(key.client, now.secs).map_err(db_err)?.map(|g| g.value());
    if let Some(old) = seen {
        by_age.remove((old, key.client)).map_err(db_err)?;
    }
    by_age.insert((now.secs, key.client), ()).map_err(db_err)?;
    let cutoff = now.secs.saturating_sub(CLIENT_TTL_SECS);
    let mut idle = Vec::new();
    for item in by_age.range(..(cutoff, 0)).map_err(db_err)?.take(EXPIRE_PER_APPLY) {
        idle.push(item.map_err(db_err)?.0.value());
    }
    for (at, client) in idle {
        by_age.remove((at, client)).map_err(db_err)?;
        clients.remove(client).map_err(db_err)?;
        results.retain_in((client, 0)..=(client, u32::MAX), |_, _| false).map_err(db_err)?;
    }
    Ok(())
}

/// Registration with a token: the node the token was given before, else `node`, else a
/// new id; the token maps to the id from now on. A token (or id) of a node an operator
/// removed is refused (`heal::refuse_removed`).
pub(super) fn register_node(
    txn: &WriteTransaction,
    token: u128,
    node: Option<NodeId>,
    addr: &str,
    zone: &str,
    capacity: u64,
) -> FsResult<CommandResult> {
    let known = txn.open_table(NODE_TOKENS).map_err(db_err)?.get(token).map_err(db_err)?.map(|g| NodeId(g.value()));
    if let Some(id) = known {
        super::heal::refuse_removed(txn, id)?;
    }
    let known = match known {
        Some(id) if txn.node(id)?.is_some() => Some(id),
        _ => None,
    };
    let res = super::data::register_node(txn, node.or(known), addr, zone, capacity)?;
    if let CommandResult::Registered(id) = res {
        txn.open_table(NODE_TOKENS).map_err(db_err)?.insert(token, id.0).map_err(db_err)?;
    }
    Ok(res)
}

/// The tables of this module in a snapshot (dump version 4); `BY_AGE` is rebuilt from
/// `clients`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnceDump {
    pub results: Vec<(u64, u32, Vec<u8>)>,
    pub clients: Vec<(u64, i64)>,
    pub node_tokens: Vec<(u128, u64)>,
}

impl OnceDump {
    pub fn read(txn: &redb::ReadTransaction) -> FsResult<OnceDump> {
        let mut d = OnceDump::default();
        for item in txn.open_table(RESULTS).map_err(db_err)?.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let (client, slot) = k.value();
            d.results.push((client, slot, v.value().to_vec()));
        }
        for item in txn.open_table(CLIENTS).map_err(db_err)?.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            d.clients.push((k.value(), v.value()));
        }
        for item in txn.open_table(NODE_TOKENS).map_err(db_err)?.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            d.node_tokens.push((k.value(), v.value()));
        }
        Ok(d)
    }

    pub fn install(&self, txn: &WriteTransaction) -> FsResult<()> {
        let mut results = txn.open_table(RESULTS).map_err(db_err)?;
        let mut clients = txn.open_table(CLIENTS).map_err(db_err)?;
        let mut by_age = txn.open_table(BY_AGE).map_err(db_err)?;
        let mut tokens = txn.open_table(NODE_TOKENS).map_err(db_err)?;
        results.retain(|_, _| false).map_err(db_err)?;
        clients.retain(|_, _| false).map_err(db_err)?;
        by_age.retain(|_, _| false).map_err(db_err)?;
        tokens.retain(|_, _| false).map_err(db_err)?;
        for (client, slot, v) in &self.results {
            results.insert((*client, *slot), v.as_slice()).map_err(db_err)?;
        }
        for (client, at) in &self.clients {
            clients.insert(*client, *at).map_err(db_err)?;
            by_age.insert((*at, *client), ()).map_err(db_err)?;
        }
        for (token, id) in &self.node_tokens {
            tokens.insert(*token, *id).map_err(db_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "once_tests.rs"]
mod tests;
