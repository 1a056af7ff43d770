//! The tables added after the first snapshot format (client sessions, open files,
//! extended attributes), dumped as a second postcard blob after the `Dump` of the first
//! format: snapshot version 2 is version 1 followed by this, so version 1 blobs still
//! install (with these tables empty).

use super::*;
use redb::ReadableTable;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtDump {
    pub sessions: Vec<(u64, Vec<u8>)>,
    pub opens: Vec<(u64, u64)>,
    pub xattrs: Vec<(u64, String, Vec<u8>)>,
}

impl ExtDump {
    pub fn read(txn: &redb::ReadTransaction) -> FsResult<ExtDump> {
        let mut d = ExtDump::default();
        for item in txn.open_table(SESSIONS).map_err(db_err)?.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            d.sessions.push((k.value(), v.value().to_vec()));
        }
        for item in txn.open_table(OPENS).map_err(db_err)?.iter().map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            d.opens.push(k.value());
        }
        for item in txn.open_table(XATTRS).map_err(db_err)?.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let (ino, name) = k.value();
            d.xattrs.push((ino, name.to_string(), v.value().to_vec()));
        }
        Ok(d)
    }

    /// Replaces these tables in `txn` by the dump (`SESSION_OPENS` is rebuilt from `opens`).
    pub fn install(&self, txn: &WriteTransaction) -> FsResult<()> {
        txn.open_table(SESSIONS).map_err(db_err)?.retain(|_, _| false).map_err(db_err)?;
        txn.open_table(OPENS).map_err(db_err)?.retain(|_, _| false).map_err(db_err)?;
        txn.open_table(SESSION_OPENS).map_err(db_err)?.retain(|_, _| false).map_err(db_err)?;
        txn.open_table(XATTRS).map_err(db_err)?.retain(|_, _| false).map_err(db_err)?;
        let mut t = txn.open_table(SESSIONS).map_err(db_err)?;
        for (k, v) in &self.sessions {
            t.insert(*k, v.as_slice()).map_err(db_err)?;
        }
        drop(t);
        let mut t = txn.open_table(OPENS).map_err(db_err)?;
        let mut by_session = txn.open_table(SESSION_OPENS).map_err(db_err)?;
        for (ino, session) in &self.opens {
            t.insert((*ino, *session), ()).map_err(db_err)?;
            by_session.insert((*session, *ino), ()).map_err(db_err)?;
        }
        drop((t, by_session));
        let mut t = txn.open_table(XATTRS).map_err(db_err)?;
        for (ino, name, v) in &self.xattrs {
            t.insert((*ino, name.as_str()), v.as_slice()).map_err(db_err)?;
        }
        Ok(())
    }
}
