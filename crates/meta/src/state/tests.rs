//! Unit tests of `apply` over an in-memory redb, without Raft.

use super::*;
use distfs_proto::WrittenBlock;
use distfs_types::{BlockId, BlockRef, FileKind};

const ROOT: InodeId = InodeId::ROOT;

fn ts(s: i64) -> Timestamp {
    Timestamp { secs: s, nanos: 0 }
}

/// The state machine and the leader's open table: after every command, the leader's
/// sweeper frees the orphans the table says nobody holds.
struct T {
    s: StateStore,
    opens: std::cell::RefCell<crate::opens::OpenTable>,
}

impl T {
    fn new() -> T {
        let s = StateStore::in_memory().expect("store");
        let t = T { s, opens: std::cell::RefCell::new(test_open_table()) };
        let format = Format { chunk_size: 1 << 20, block_size: 64 << 10, replication: 3 };
        t.run(Command::Format { format, now: ts(1) }).expect("format");
        t
    }
    fn run(&self, c: Command) -> FsResult<CommandResult> {
        let r = self.s.apply_entry(None, None, Some(&c)).expect("store works").expect("a command");
        sweep_orphans(&self.s, &mut self.opens.borrow_mut());
        r
    }
    fn hold(&self, ino: InodeId, session: u64) {
        self.opens.borrow_mut().hold(ino, session).expect("hold");
    }
    fn release(&self, ino: InodeId, session: u64) {
        self.opens.borrow_mut().release(ino, session);
        sweep_orphans(&self.s, &mut self.opens.borrow_mut());
    }
    fn orphans(&self) -> Vec<InodeId> {
        self.s.read().unwrap().orphans(100).unwrap()
    }
    fn attr(&self, c: Command) -> Attr {
        match self.run(c) {
            Ok(CommandResult::Attr(a)) => a,
            other => panic!("expected Attr, got {other:?}"),
        }
    }
    fn mkdir(&self, parent: InodeId, name: &str) -> Attr {
        self.attr(Command::Mkdir { parent, name: name.into(), perm: 0o755, uid: 0, gid: 0, now: ts(2) })
    }
    fn create(&self, parent: InodeId, name: &str) -> Attr {
        self.attr(Command::Create {
            parent,
            name: name.into(),
            perm: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
            now: ts(2),
            open: None,
        })
    }
    fn get(&self, ino: InodeId) -> Option<Attr> {
        self.s.read().unwrap().inode(ino).unwrap().map(|i| i.attr)
    }
    fn lookup(&self, parent: InodeId, name: &str) -> Option<InodeId> {
        self.s.read().unwrap().dentry(parent, name).unwrap().map(|d| d.ino)
    }
    fn rename(&self, p: InodeId, n: &str, np: InodeId, nn: &str, mode: RenameMode) -> FsResult<CommandResult> {
        self.run(Command::Rename { parent: p, name: n.into(), new_parent: np, new_name: nn.into(), mode, now: ts(5) })
    }
    fn commit(&self, ino: InodeId, chunk: u64, offset: u64, blocks: &[(u128, u32)], min_size: u64) -> Attr {
        let len = blocks.iter().map(|b| b.1 as u64).sum();
        let blocks = blocks
            .iter()
            .map(|(id, len)| WrittenBlock {
                block: BlockRef { id: BlockId(*id), len: *len },
                replicas: vec![NodeId(1), NodeId(2)],
            })
            .collect();
        self.attr(Command::CommitWrite {
            ino,
            slices: vec![SliceWrite { chunk, offset, len, blocks, inline: None }],
            min_size,
            mtime: ts(7),
            bad: vec![],
            now: ts(8),
        })
    }
    fn gc(&self, node: u64) -> Vec<BlockId> {
        self.s.read().unwrap().gc_for_node(NodeId(node), 1000).unwrap()
    }
    fn block(&self, id: u128) -> Option<BlockRec> {
        self.s.read().unwrap().block(BlockId(id)).unwrap()
    }
}

#[test]
fn mkdir_create_lookup_readdir_pagination() {
    let t = T::new();
    let a = t.mkdir(ROOT, "a");
    assert_eq!((a.kind, a.nlink), (FileKind::Dir, 2));
    assert_eq!(t.get(ROOT).unwrap().nlink, 3);
    for i in 0..5 {
        t.create(a.ino, &format!("f{i}"));
    }
    assert!(matches!(
        t.run(Command::Create {
            parent: a.ino,
            name: "f1".into(),
            perm: 0,
            uid: 0,
            gid: 0,
            exclusive: true,
            now: ts(3),
            open: None,
        }),
        Err(FsError::AlreadyExists { .. })
    ));
    let again = t.attr(Command::Create {
        parent: a.ino,
        name: "f1".into(),
        perm: 0,
        uid: 0,
        gid: 0,
        exclusive: false,
        now: ts(3),
        open: None,
    });
    assert_eq!(Some(again.ino), t.lookup(a.ino, "f1"));
    let r = t.s.read().unwrap();
    let (page, more) = r.readdir(a.ino, None, 2).unwrap();
    assert_eq!((page.len(), more), (2, true));
    let (page2, more) = r.readdir(a.ino, Some(&page[1].name), 2).unwrap();
    assert_eq!(page2[0].name, "f2");
    assert!(more);
    let (page3, more) = r.readdir(a.ino, Some("f3"), 2).unwrap();
    assert_eq!((page3.len(), more), (1, false));
    assert_eq!(t.get(a.ino).unwrap().mtime, ts(2), "an O_CREAT open of an existing file changes nothing");
}

#[test]
fn names_are_validated() {
    let t = T::new();
    for bad in ["", ".", "..", "a/b"] {
        assert!(
            matches!(
                t.run(Command::Mkdir { parent: ROOT, name: bad.into(), perm: 0, uid: 0, gid: 0, now: ts(2) }),
                Err(FsError::InvalidArgument { .. })
            ),
            "{bad:?}"
        );
    }
    let long = "x".repeat(256);
    assert!(matches!(
        t.run(Command::Mkdir { parent: ROOT, name: long, perm: 0, uid: 0, gid: 0, now: ts(2) }),
        Err(FsError::NameTooLong { len: 256, .. })
    ));
    t.mkdir(ROOT, &"x".repeat(255));
}

#[test]
fn setattr_chmod_chown_utimens() {
    let t = T::new();
    let f = t.create(ROOT, "f");
    let set = SetAttr {
        perm: Some(0o600),
        uid: Some(7),
        gid: Some(8),
        atime: Some(ts(100)),
        mtime: Some(ts(101)),
        size: None,
    };
    let a = t.attr(Command::SetAttr { ino: f.ino, set, now: ts(9) });
    assert_eq!((a.perm, a.uid, a.gid, a.atime, a.mtime, a.ctime), (0o600, 7, 8, ts(100), ts(101), ts(9)));
    assert!(a.version > f.version);
}

#[test]
fn rename_cases() {
    let t = T::new();
    let d1 = t.mkdir(ROOT, "d1");
    let d2 = t.mkdir(ROOT, "d2");
    let sub = t.mkdir(d1.ino, "sub");
    t.mkdir(d2.ino, "full");
    t.create(t.lookup(d2.ino, "full").unwrap(), "x");
    let f = t.create(ROOT, "f");
    let g = t.create(ROOT, "g");
    // File over file replaces atomically; the old target is gone.
    t.rename(ROOT, "f", ROOT, "g", RenameMode::Replace).unwrap();
    assert_eq!(t.lookup(ROOT, "g"), Some(f.ino));
    assert!(t.get(g.ino).is_none());
    // File over dir, dir over file.
    assert!(matches!(t.rename(ROOT, "g", ROOT, "d1", RenameMode::Replace), Err(FsError::IsADirectory { .. })));
    assert!(matches!(t.rename(ROOT, "d1", ROOT, "g", RenameMode::Replace), Err(FsError::NotADirectory { .. })));
    // Dir over non-empty dir.
    assert!(matches!(
        t.rename(ROOT, "d1", d2.ino, "full", RenameMode::Replace),
        Err(FsError::DirectoryNotEmpty { .. })
    ));
    // Into its own subtree.
    assert!(matches!(t.rename(ROOT, "d1", sub.ino, "loop", RenameMode::Replace), Err(FsError::InvalidArgument { .. })));
    // NoReplace.
    assert!(matches!(t.rename(ROOT, "d1", ROOT, "d2", RenameMode::NoReplace), Err(FsError::AlreadyExists { .. })));
    // Dir over empty dir, across parents: nlinks follow.
    let empty = t.mkdir(d2.ino, "empty");
    let root_nlink = t.get(ROOT).unwrap().nlink;
    let d2_nlink = t.get(d2.ino).unwrap().nlink;
    t.rename(d1.ino, "sub", d2.ino, "empty", RenameMode::Replace).unwrap();
    assert!(t.get(empty.ino).is_none());
    assert_eq!(t.lookup(d2.ino, "empty"), Some(sub.ino));
    assert_eq!(t.get(d1.ino).unwrap().nlink, 2);
    assert_eq!(t.get(d2.ino).unwrap().nlink, d2_nlink);
    assert_eq!(t.get(ROOT).unwrap().nlink, root_nlink);
    // Exchange a file and a directory across parents.
    t.rename(ROOT, "g", d2.ino, "empty", RenameMode::Exchange).unwrap();
    assert_eq!(t.lookup(ROOT, "g"), Some(sub.ino));
    assert_eq!(t.lookup(d2.ino, "empty"), Some(f.ino));
    assert_eq!(t.get(ROOT).unwrap().nlink, root_nlink + 1);
    assert_eq!(t.get(d2.ino).unwrap().nlink, d2_nlink - 1);
    assert!(matches!(t.rename(ROOT, "g", ROOT, "nope", RenameMode::Exchange), Err(FsError::NotFound { .. })));
}

#[test]
fn unlink_rmdir_symlink_and_hard_links() {
    let t = T::new();
    let d = t.mkdir(ROOT, "d");
    let f = t.create(d.ino, "f");
    assert!(matches!(
        t.run(Command::Rmdir { parent: ROOT, name: "d".into(), now: ts(3) }),
        Err(FsError::DirectoryNotEmpty { .. })
    ));
    let l = t.attr(Command::Link { ino: f.ino, new_parent: ROOT, new_name: "hard".into(), now: ts(3) });
    assert_eq!(l.nlink, 2);
    t.commit(f.ino, 0, 0, &[(10, 100)], 100);
    t.run(Command::Unlink { parent: d.ino, name: "f".into(), now: ts(4) }).unwrap();
    assert_eq!(t.get(f.ino).unwrap().nlink, 1);
    assert!(t.block(10).is_some(), "data kept while a link remains");
    t.run(Command::Unlink { parent: ROOT, name: "hard".into(), now: ts(4) }).unwrap();
    assert!(t.get(f.ino).is_none());
    assert!(t.block(10).is_none());
    assert_eq!(t.gc(1), vec![BlockId(10)]);
    t.run(Command::Rmdir { parent: ROOT, name: "d".into(), now: ts(5) }).unwrap();
    assert_eq!(t.get(ROOT).unwrap().nlink, 2);
    let s =
        t.attr(Command::Symlink { parent: ROOT, name: "s".into(), target: "/x/y".into(), uid: 0, gid: 0, now: ts(6) });
    let r = t.s.read().unwrap();
    assert_eq!(r.inode(s.ino).unwrap().unwrap().target.as_deref(), Some("/x/y"));
    assert!(matches!(
        t.run(Command::Unlink { parent: ROOT, name: "nope".into(), now: ts(6) }),
        Err(FsError::NotFound { .. })
    ));
}

#[test]
fn commit_write_prunes_hidden_slices_and_gc_tracks_replicas() {
    let t = T::new();
    let f = t.create(ROOT, "f");
    let a = t.commit(f.ino, 0, 0, &[(1, 1000)], 1000);
    assert_eq!((a.size, a.mtime, a.ctime), (1000, ts(7), ts(8)));
    // A second write over the first one's middle keeps both.
    t.commit(f.ino, 0, 100, &[(2, 100)], 200);
    assert_eq!(t.s.read().unwrap().chunk(f.ino, 0).unwrap().len(), 2);
    assert_eq!(t.get(f.ino).unwrap().size, 1000, "size never shrinks on commit");
    // A write covering everything hides both older slices: their blocks are released.
    t.commit(f.ino, 0, 0, &[(3, 1000)], 1000);
    let slices = t.s.read().unwrap().chunk(f.ino, 0).unwrap();
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0].blocks[0].id, BlockId(3));
    assert!(t.block(1).is_none() && t.block(2).is_none());
    assert_eq!(t.gc(2), vec![BlockId(1), BlockId(2)]);
    // Sequence numbers grow per commit.
    assert!(slices[0].seq.0 >= 3);
    // A bad replica report drops the node from the block and queues the bad copy.
    t.run(Command::ReportBadReplica { bad: BadReplica { block: BlockId(3), node: NodeId(2), reason: "crc".into() } })
        .unwrap();
    assert_eq!(t.block(3).unwrap().replicas, vec![NodeId(1)]);
    assert!(t.gc(2).contains(&BlockId(3)));
    assert_eq!(t.s.read().unwrap().bad_replicas().unwrap().len(), 1);
    // GC acknowledgement empties the node's queue.
    t.run(Command::GcAck { node: NodeId(2), blocks: vec![BlockId(1), BlockId(2), BlockId(3)] }).unwrap();
    assert!(t.gc(2).is_empty());
    assert_eq!(t.gc(1), vec![BlockId(1), BlockId(2)]);
}

#[test]
fn truncate_down_then_up_reads_zeros() {
    let t = T::new();
    let f = t.create(ROOT, "f");
    let chunk = 1u64 << 20;
    t.commit(f.ino, 0, 0, &[(1, 65536), (2, 65536)], 131072);
    t.commit(f.ino, 1, 0, &[(3, 1000)], chunk + 1000);
    let set = |size| SetAttr { size: Some(size), ..Default::default() };
    let a = t.attr(Command::SetAttr { ino: f.ino, set: set(1000), now: ts(9) });
    assert_eq!((a.size, a.mtime), (1000, ts(9)));
    let r = t.s.read().unwrap();
    assert!(r.chunk(f.ino, 1).unwrap().is_empty(), "later chunk dropped");
    let s = r.chunk(f.ino, 0).unwrap();
    assert_eq!((s[0].len, s[0].blocks.len()), (1000, 1), "slice clipped, trailing block released");
    drop(r);
    assert!(t.block(2).is_none() && t.block(3).is_none());
    assert!(t.block(1).is_some());
    // Growing again exposes a hole, not the old bytes.
    t.attr(Command::SetAttr { ino: f.ino, set: set(2 * chunk), now: ts(10) });
    let s = t.s.read().unwrap().chunk(f.ino, 0).unwrap();
    assert_eq!(s.iter().map(|s| s.end()).max(), Some(1000));
    // Truncate to zero frees everything.
    t.attr(Command::SetAttr { ino: f.ino, set: set(0), now: ts(11) });
    assert!(t.block(1).is_none());
    assert!(matches!(
        t.run(Command::SetAttr { ino: ROOT, set: set(0), now: ts(11) }),
        Err(FsError::IsADirectory { .. })
    ));
}

#[test]
fn failed_commands_leave_no_trace_and_nodes_register() {
    let t = T::new();
    let before = t.s.dump().unwrap().0;
    assert!(t.rename(ROOT, "missing", ROOT, "x", RenameMode::Replace).is_err());
    assert_eq!(t.s.dump().unwrap().0, before);
    let id = |r: FsResult<CommandResult>| match r {
        Ok(CommandResult::Registered(n)) => n,
        other => panic!("{other:?}"),
    };
    let n1 = id(t.run(Command::RegisterNode { node: None, addr: "a:1".into(), zone: "z".into(), capacity: 10 }));
    let n2 = id(t.run(Command::RegisterNode { node: None, addr: "a:2".into(), zone: "z".into(), capacity: 10 }));
    assert_ne!(n1, n2);
    assert_eq!(
        id(t.run(Command::RegisterNode { node: Some(n1), addr: "b:1".into(), zone: "y".into(), capacity: 20 })),
        n1
    );
    assert_eq!(t.s.read().unwrap().node(n1).unwrap().unwrap().addr, "b:1");
}

#[test]
fn snapshot_round_trip_reproduces_state() {
    let t = T::new();
    let d = t.mkdir(ROOT, "d");
    let f = t.create(d.ino, "f");
    t.commit(f.ino, 0, 0, &[(1, 100)], 100);
    t.run(Command::RegisterNode { node: None, addr: "a:1".into(), zone: "z".into(), capacity: 10 }).unwrap();
    t.run(Command::Unlink { parent: d.ino, name: "f".into(), now: ts(3) }).unwrap();
    let log_id = LogId::new(openraft::CommittedLeaderId::new(1, 1), 9);
    let members = openraft::Membership::new(vec![std::collections::BTreeSet::from([1u64])], None);
    let sm = Membership::new(Some(log_id), members);
    t.s.apply_entry(Some(log_id), Some(&sm), None).unwrap();
    let (blob, last, m) = t.s.dump().unwrap();
    assert_eq!((last, &m), (Some(log_id), &sm));
    let other = StateStore::in_memory().unwrap();
    other.install(&blob, last, &m).unwrap();
    assert_eq!(other.dump().unwrap().0, blob);
    let r = other.read().unwrap();
    assert_eq!(r.dentry(ROOT, "d").unwrap().map(|x| x.ino), Some(d.ino));
    assert_eq!(r.gc_for_node(NodeId(1), 10).unwrap(), vec![BlockId(1)]);
}

#[test]
fn unlinked_while_open_keeps_data_until_the_last_release() {
    let t = T::new();
    let f = t.create(ROOT, "f");
    t.commit(f.ino, 0, 0, &[(1, 100)], 100);
    t.hold(f.ino, 7);
    t.hold(f.ino, 8);
    t.run(Command::Unlink { parent: ROOT, name: "f".into(), now: ts(9) }).expect("unlink");
    assert_eq!(t.lookup(ROOT, "f"), None);
    assert_eq!(t.get(f.ino).expect("kept while open").nlink, 0);
    assert_eq!(t.orphans(), vec![f.ino]);
    assert!(t.block(1).is_some() && t.gc(1).is_empty(), "the data stays while open");
    t.release(f.ino, 7);
    assert!(t.get(f.ino).is_some(), "session 8 still holds it");
    t.release(f.ino, 8);
    assert_eq!(t.get(f.ino), None);
    assert!(t.orphans().is_empty());
    assert_eq!(t.gc(1), vec![BlockId(1)]);
    // A file that is not open goes with the sweep that follows its unlink.
    let g = t.create(ROOT, "g");
    t.commit(g.ino, 0, 0, &[(2, 10)], 10);
    t.run(Command::Unlink { parent: ROOT, name: "g".into(), now: ts(9) }).expect("unlink g");
    assert_eq!(t.get(g.ino), None);
}

#[test]
fn free_orphans_frees_only_orphans_and_only_in_the_term_that_decided() {
    let t = T::new();
    let f = t.create(ROOT, "f");
    t.commit(f.ino, 0, 0, &[(1, 100)], 100);
    // An inode with a name is no orphan, whatever the command says.
    t.run(Command::FreeOrphans { term: 0, inos: vec![f.ino, InodeId(999)] }).expect("free");
    assert_eq!(t.get(f.ino).map(|a| a.nlink), Some(1));
    assert!(t.block(1).is_some());
    t.hold(f.ino, 4);
    t.run(Command::Unlink { parent: ROOT, name: "f".into(), now: ts(9) }).expect("unlink");
    // A sweep decided in term 2 but written at a log position of term 3 frees nothing.
    let free = Command::FreeOrphans { term: 2, inos: vec![f.ino] };
    let at = |term: u64, index: u64| LogId::new(openraft::CommittedLeaderId::new(term, 1), index);
    t.s.apply_entry(Some(at(3, 20)), None, Some(&free)).unwrap().unwrap().expect("ignored");
    assert!(t.get(f.ino).is_some(), "a sweep of another term is ignored");
    t.s.apply_entry(Some(at(2, 21)), None, Some(&free)).unwrap().unwrap().expect("applied");
    assert_eq!(t.get(f.ino), None);
    assert_eq!(t.gc(1), vec![BlockId(1)]);
}

#[test]
fn renamed_over_while_open_and_session_leases() {
    let t = T::new();
    let old = t.create(ROOT, "target");
    t.commit(old.ino, 0, 0, &[(1, 100)], 100);
    let new = t.create(ROOT, "tmp");
    t.hold(old.ino, 5);
    t.rename(ROOT, "tmp", ROOT, "target", RenameMode::Replace).expect("rename over");
    assert_eq!(t.lookup(ROOT, "target"), Some(new.ino));
    assert_eq!(t.get(old.ino).expect("kept").nlink, 0);
    t.release(old.ino, 5);
    assert_eq!(t.get(old.ino), None);
    assert_eq!(t.gc(1), vec![BlockId(1)]);
    // Sessions: a renewal of an unknown session is `NotFound`; touching starts one;
    // renewal moves the lease forward; expiry before it does nothing.
    assert!(matches!(t.run(Command::RenewSession { session: 5, expires: ts(70) }), Err(FsError::NotFound { .. })));
    t.run(Command::TouchSession { session: 5, expires: ts(50) }).expect("touch");
    t.run(Command::TouchSession { session: 5, expires: ts(40) }).expect("touch never shortens");
    t.run(Command::RenewSession { session: 5, expires: ts(60) }).expect("renew");
    t.run(Command::ExpireSessions { now: ts(55) }).expect("expire early");
    assert_eq!(t.s.read().unwrap().session(5).unwrap(), Some(ts(60)));
    t.run(Command::ExpireSessions { now: ts(61) }).expect("expire");
    assert_eq!(t.s.read().unwrap().session(5).unwrap(), None);
    t.run(Command::TouchSession { session: 6, expires: ts(90) }).expect("touch");
    t.run(Command::CloseSession { session: 6 }).expect("close");
    assert!(t.s.read().unwrap().sessions().unwrap().is_empty());
}

/// Entries of earlier builds, which registered opens in the log, still apply: their
/// release makes a kept inode an orphan, which the sweeper then frees.
#[test]
fn open_and_release_entries_of_earlier_builds_still_apply() {
    let t = T::new();
    let f = t.attr(Command::Create {
        parent: ROOT,
        name: "held".into(),
        perm: 0o644,
        uid: 0,
        gid: 0,
        exclusive: true,
        now: ts(2),
        open: Some((9, ts(50))),
    });
    t.commit(f.ino, 0, 0, &[(3, 100)], 100);
    t.run(Command::OpenFile { ino: f.ino, session: 8, expires: ts(50) }).expect("open");
    assert_eq!(t.s.read().unwrap().session(9).unwrap(), Some(ts(50)), "the session started");
    t.hold(f.ino, 9);
    t.run(Command::Unlink { parent: ROOT, name: "held".into(), now: ts(3) }).expect("unlink");
    t.run(Command::ReleaseFile { ino: f.ino, session: 8 }).expect("release");
    assert_eq!(t.get(f.ino).expect("still held in the table").nlink, 0);
    t.release(f.ino, 9);
    assert_eq!(t.get(f.ino), None);
    assert_eq!(t.gc(1), vec![BlockId(3)]);
    assert!(matches!(
        t.run(Command::OpenFile { ino: f.ino, session: 8, expires: ts(100) }),
        Err(FsError::StaleInode { .. })
    ));
}

#[test]
fn xattrs_create_replace_remove_limits_and_snapshot() {
    use distfs_proto::{XattrMode, XATTR_SIZE_MAX};
    let t = T::new();
    let f = t.create(ROOT, "f");
    let set = |name: &str, v: &[u8], mode| {
        t.run(Command::SetXattr { ino: f.ino, name: name.into(), value: v.to_vec(), mode, now: ts(20) })
    };
    assert!(matches!(set("user.a", b"1", XattrMode::Replace), Err(FsError::NoData { .. })));
    set("user.a", b"1", XattrMode::Create).expect("create");
    assert!(matches!(set("user.a", b"2", XattrMode::Create), Err(FsError::AlreadyExists { .. })));
    set("user.a", b"2", XattrMode::Replace).expect("replace");
    set("user.b", b"", XattrMode::Any).expect("empty value");
    assert!(matches!(set(&"n".repeat(256), b"x", XattrMode::Any), Err(FsError::OutOfRange { .. })));
    assert!(matches!(set("user.big", &vec![0; XATTR_SIZE_MAX + 1], XattrMode::Any), Err(FsError::TooBig { .. })));
    set("user.max", &vec![7; XATTR_SIZE_MAX], XattrMode::Any).expect("64 KiB value");
    assert_eq!(t.get(f.ino).unwrap().ctime, ts(20));
    let r = t.s.read().unwrap();
    assert_eq!(r.xattr(f.ino, "user.a").unwrap(), Some(b"2".to_vec()));
    let names: Vec<String> = r.xattr_names(f.ino).unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["user.a", "user.b", "user.max"]);
    drop(r);
    let rm = |name: &str| t.run(Command::RemoveXattr { ino: f.ino, name: name.into(), now: ts(21) });
    rm("user.b").expect("remove");
    assert!(matches!(rm("user.b"), Err(FsError::NoData { .. })));

    // Snapshots carry xattrs, sessions and orphans.
    t.run(Command::TouchSession { session: 3, expires: ts(40) }).expect("session");
    let g = t.create(ROOT, "g");
    t.hold(g.ino, 3);
    t.run(Command::Unlink { parent: ROOT, name: "g".into(), now: ts(22) }).expect("unlink g");
    let (blob, _, m) = t.s.dump().expect("dump");
    let copy = StateStore::in_memory().expect("store");
    copy.install(&blob, None, &m).expect("install");
    let r = copy.read().unwrap();
    assert_eq!(r.xattr(f.ino, "user.a").unwrap(), Some(b"2".to_vec()));
    assert_eq!(r.sessions().unwrap(), vec![(3, ts(40))]);
    assert_eq!(r.orphans(10).unwrap(), vec![g.ino]);
    drop(r);
    // Freeing the inode drops its xattrs.
    t.run(Command::CloseSession { session: 3 }).expect("close");
    t.run(Command::Unlink { parent: ROOT, name: "f".into(), now: ts(30) }).expect("unlink");
    assert!(t.s.read().unwrap().xattr_names(f.ino).unwrap().is_empty());
}

/// A repair copy onto a node that still has a deletion of the same block queued (a bad
/// copy it reported) is not recorded: the queued deletion could remove the new copy.
/// Once the node acknowledges the deletion, the next copy is recorded.
#[test]
fn a_copy_is_not_recorded_while_a_deletion_on_that_node_is_pending() {
    let t = T::new();
    let f = t.create(ROOT, "f");
    t.commit(f.ino, 0, 0, &[(7, 1000)], 1000);
    t.run(Command::ReportBadReplica { bad: BadReplica { block: BlockId(7), node: NodeId(2), reason: "crc".into() } })
        .unwrap();
    assert_eq!(t.gc(2), vec![BlockId(7)], "the bad copy is queued for deletion");
    let replicas = |t: &T| t.s.read().unwrap().block(BlockId(7)).unwrap().unwrap().replicas;
    assert_eq!(replicas(&t), vec![NodeId(1)]);

    t.run(Command::UpdateReplicas { block: BlockId(7), add: Some(NodeId(2)), drop: vec![] }).unwrap();
    assert_eq!(replicas(&t), vec![NodeId(1)], "not recorded while the deletion is pending");

    t.run(Command::GcAck { node: NodeId(2), blocks: vec![BlockId(7)] }).unwrap();
    t.run(Command::UpdateReplicas { block: BlockId(7), add: Some(NodeId(2)), drop: vec![] }).unwrap();
    assert_eq!(replicas(&t), vec![NodeId(1), NodeId(2)]);
    assert!(t.gc(2).is_empty());
}

#[test]
fn locks_conflict_between_sessions_and_end_with_release_session_and_inode() {
    use crate::locks::LockReq;
    use distfs_types::LockKind::{Read, Write};
    let t = T::new();
    let f = t.create(ROOT, "f");
    let lock = |session: u64, start: u64, end: u64, kind| {
        t.run(Command::SetLock { ino: f.ino, req: LockReq { session, owner: 1, start, end, kind, pid: 9 } })
    };
    lock(1, 0, 99, Some(Write)).expect("session 1 locks 0..=99");
    assert!(matches!(lock(2, 50, 50, Some(Read)), Err(FsError::LockConflict { .. })));
    lock(2, 100, 200, Some(Write)).expect("a free range");
    // The locks travel with a snapshot (they live in the meta table).
    let copy = T::new();
    let (blob, last, m) = t.s.dump().expect("dump");
    copy.s.install(&blob, last, &m).expect("install");
    let conflicting = copy.run(Command::SetLock {
        ino: f.ino,
        req: LockReq { session: 2, owner: 1, start: 0, end: 0, kind: Some(Write), pid: 9 },
    });
    assert!(matches!(conflicting, Err(FsError::LockConflict { .. })), "{conflicting:?}");
    // The last release of the inode by session 1 drops its locks on it.
    t.run(Command::ReleaseFile { ino: f.ino, session: 1 }).expect("release");
    lock(2, 0, 99, Some(Write)).expect("free after session 1 released the file");
    // Closing (or expiring) a session drops all its locks.
    t.run(Command::TouchSession { session: 2, expires: ts(50) }).expect("session");
    t.run(Command::CloseSession { session: 2 }).expect("close");
    lock(3, 0, u64::MAX, Some(Write)).expect("free after session 2 closed");
    // Freeing the inode forgets its locks; a lock on a gone inode is stale.
    t.run(Command::Unlink { parent: ROOT, name: "f".into(), now: ts(9) }).expect("unlink");
    assert!(matches!(lock(3, 0, 0, Some(Write)), Err(FsError::StaleInode { .. })));
    assert!(t
        .s
        .read()
        .unwrap()
        .meta_get::<Vec<crate::locks::LockRec>>(&format!("locks/{:020}", f.ino.0))
        .unwrap()
        .is_none());
}

#[test]
fn many_replica_updates_in_one_entry_apply_like_single_ones() {
    let t = T::new();
    let f = t.create(ROOT, "f");
    t.commit(f.ino, 0, 0, &[(7, 1000), (8, 1000)], 2000);
    let replicas = |t: &T, b: u128| t.s.read().unwrap().block(BlockId(b)).unwrap().unwrap().replicas;
    t.run(Command::UpdateReplicasMany {
        updates: vec![
            (BlockId(7), Some(NodeId(5)), vec![]),
            (BlockId(8), Some(NodeId(3)), vec![NodeId(1)]),
            // A block freed while it was copied: the new copy goes to the GC queue.
            (BlockId(99), Some(NodeId(4)), vec![]),
        ],
    })
    .unwrap();
    let seven = replicas(&t, 7);
    assert!(seven.ends_with(&[NodeId(5)]), "{seven:?}");
    assert!(!replicas(&t, 8).contains(&NodeId(1)) && replicas(&t, 8).contains(&NodeId(3)));
    assert_eq!(t.gc(1), vec![BlockId(8)], "the dropped copy is queued for deletion");
    assert_eq!(t.gc(4), vec![BlockId(99)]);
}

#[test]
fn inline_slices_are_bounded_checked_truncated_and_overwritten_by_blocks() {
    let t = T::new();
    let f = t.create(ROOT, "small");
    let inline = |chunk, offset, data: Vec<u8>| SliceWrite {
        chunk,
        offset,
        len: data.len() as u64,
        blocks: vec![],
        inline: Some(distfs_types::Inline::new(data)),
    };
    let commit = |s: SliceWrite| {
        let min_size = s.offset + s.len;
        t.run(Command::CommitWrite { ino: f.ino, slices: vec![s], min_size, mtime: ts(7), bad: vec![], now: ts(8) })
    };
    // Past INLINE_MAX, outside chunk 0, a checksum that does not match: refused.
    let big = inline(0, distfs_types::INLINE_MAX - 10, vec![1; 20]);
    assert!(matches!(commit(big), Err(FsError::InvalidArgument { .. })));
    assert!(matches!(commit(inline(1, 0, vec![1; 20])), Err(FsError::InvalidArgument { .. })));
    let mut bad = inline(0, 0, vec![1; 20]);
    bad.inline.as_mut().unwrap().data[3] = 9;
    assert!(matches!(commit(bad), Err(FsError::InvalidArgument { .. })));
    let mut short = inline(0, 0, vec![1; 20]);
    short.len = 30;
    assert!(matches!(commit(short), Err(FsError::InvalidArgument { .. })));

    assert!(commit(inline(0, 0, (0..100u8).collect())).is_ok());
    assert_eq!(t.get(f.ino).unwrap().size, 100);
    assert!(t.block(1).is_none(), "an inline write allocates no block");
    // Truncate clips the inline data itself, with a fresh checksum.
    t.attr(Command::SetAttr { ino: f.ino, set: SetAttr { size: Some(40), ..Default::default() }, now: ts(9) });
    let slices = t.s.read().unwrap().chunk(f.ino, 0).unwrap();
    let data = slices[0].inline.as_ref().unwrap();
    assert!(data.verify());
    assert_eq!(data.data, (0..40u8).collect::<Vec<_>>());
    // A block written over the whole range makes the inline slice invisible: pruned.
    t.commit(f.ino, 0, 0, &[(5, 100)], 100);
    let slices = t.s.read().unwrap().chunk(f.ino, 0).unwrap();
    assert_eq!(slices.len(), 1);
    assert!(slices[0].inline.is_none());
}

#[test]
fn a_database_of_another_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    drop(StateStore::open(&path).expect("a new database is stamped"));
    drop(StateStore::open(&path).expect("and opens again"));
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        meta_put(&txn, K_SCHEMA, &1u32).unwrap();
        txn.commit().unwrap();
    }
    let err = StateStore::open(&path).err().expect("schema 1 is refused");
    assert!(err.to_string().contains("schema 1"), "{err}");
}

#[test]
fn a_batch_applies_each_command_as_its_own_entry_and_a_failing_one_undoes_nothing_else() {
    let t = T::new();
    let d = t.mkdir(ROOT, "d");
    let mk = |name: &str| Command::Mkdir { parent: d.ino, name: name.into(), perm: 0o755, uid: 0, gid: 0, now: ts(3) };
    let once = |seq: u64, cmd: Command| Command::Once { client: 7, slot: 0, seq, now: ts(3), cmd: Box::new(cmd) };
    let batch = Command::Batch(vec![
        mk("a"),
        // Fails half-way through nothing: its own transaction is aborted, not the batch.
        Command::Rename {
            parent: d.ino,
            name: "missing".into(),
            new_parent: d.ino,
            new_name: "x".into(),
            mode: RenameMode::Replace,
            now: ts(3),
        },
        mk("a"),
        once(1, mk("b")),
        Command::Batch(vec![mk("nested")]),
    ]);
    let at = LogId::new(openraft::CommittedLeaderId::new(1, 1), 40);
    let r = t.s.apply_entry(Some(at), None, Some(&batch)).expect("store works").expect("a result");
    let Ok(CommandResult::Batch(rs)) = r else { panic!("a batch answers per command: {r:?}") };
    assert_eq!(rs.len(), 5);
    assert!(matches!(&rs[0], Ok(CommandResult::Attr(a)) if a.kind == FileKind::Dir));
    assert!(matches!(rs[1], Err(FsError::NotFound { .. })), "{:?}", rs[1]);
    assert!(matches!(rs[2], Err(FsError::AlreadyExists { .. })), "the second mkdir of a sees the first: {:?}", rs[2]);
    assert!(matches!(&rs[3], Ok(CommandResult::Attr(_))));
    assert!(matches!(rs[4], Err(FsError::InvalidArgument { .. })), "{:?}", rs[4]);
    assert!(t.lookup(d.ino, "a").is_some() && t.lookup(d.ino, "b").is_some());
    assert_eq!(t.lookup(d.ino, "nested"), None);
    assert_eq!(t.s.applied_state().expect("state").0, Some(at), "the entry is applied once, as a whole");
    // The request id inside the batch is remembered: its retry, alone, answers the same.
    let again = t.run(once(1, mk("b")));
    assert_eq!(again, rs[3]);
}
