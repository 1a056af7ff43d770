//! Snapshot commands over an in-memory redb, without Raft: structure of the copy, block
//! refcounts after every step (`invariants::check_block_refs`), read-only enforcement,
//! restore, delete and the GC queue.

use super::invariants::check_block_refs;
use super::snapshots::{list, SNAPSHOTS_DIR};
use super::*;
use distfs_proto::WrittenBlock;
use distfs_types::{BlockId, BlockRef, FileKind, Inline, Slice};

const ROOT: InodeId = InodeId::ROOT;

fn ts(s: i64) -> Timestamp {
    Timestamp { secs: s, nanos: 0 }
}

struct T {
    s: StateStore,
}

impl T {
    fn new() -> T {
        let t = T { s: StateStore::in_memory().expect("store") };
        let format = Format { chunk_size: 1 << 20, block_size: 64 << 10, replication: 2 };
        t.run(Command::Format { format, now: ts(1) }).expect("format");
        t
    }
    /// Runs a command, then checks the block-map invariants.
    fn run(&self, c: Command) -> FsResult<CommandResult> {
        let r = self.s.apply_entry(None, None, Some(&c)).expect("store works").expect("a command");
        // The leader's sweeper, with nothing open.
        crate::state::sweep_orphans(&self.s, &mut crate::state::test_open_table());
        if let Err(e) = check_block_refs(&self.s.read().unwrap()) {
            panic!("after {c:?}: {e}");
        }
        r
    }
    fn attr(&self, c: Command) -> Attr {
        match self.run(c) {
            Ok(CommandResult::Attr(a)) => a,
            other => panic!("expected Attr, got {other:?}"),
        }
    }
    fn mkdir(&self, parent: InodeId, name: &str) -> Attr {
        self.attr(Command::Mkdir { parent, name: name.into(), perm: 0o750, uid: 3, gid: 4, now: ts(2) })
    }
    fn create(&self, parent: InodeId, name: &str) -> Attr {
        self.attr(Command::Create {
            parent,
            name: name.into(),
            perm: 0o644,
            uid: 3,
            gid: 4,
            exclusive: true,
            now: ts(2),
            open: None,
        })
    }
    fn commit(&self, ino: InodeId, blocks: &[(u128, u32)]) -> FsResult<CommandResult> {
        let len = blocks.iter().map(|b| b.1 as u64).sum();
        let blocks = blocks
            .iter()
            .map(|(id, len)| WrittenBlock {
                block: BlockRef { id: BlockId(*id), len: *len },
                replicas: vec![NodeId(1), NodeId(2)],
            })
            .collect();
        self.run(Command::CommitWrite {
            ino,
            slices: vec![SliceWrite { chunk: 0, offset: 0, len, blocks, inline: None }],
            min_size: len,
            mtime: ts(7),
            bad: vec![],
            now: ts(8),
        })
    }
    fn inline(&self, ino: InodeId, data: &[u8]) {
        let len = data.len() as u64;
        let inline = Some(Inline::new(data.to_vec()));
        self.run(Command::CommitWrite {
            ino,
            slices: vec![SliceWrite { chunk: 0, offset: 0, len, blocks: vec![], inline }],
            min_size: len,
            mtime: ts(7),
            bad: vec![],
            now: ts(8),
        })
        .expect("inline commit");
    }
    fn snap(&self, c: SnapCmd) -> FsResult<CommandResult> {
        self.run(Command::Snapshot(c))
    }
    fn create_snap(&self, source: InodeId, name: &str) -> FsResult<CommandResult> {
        self.snap(SnapCmd::Create { source, path: "/d".into(), name: name.into(), now: ts(10) })
    }
    /// Follows a path of names from the root.
    fn path(&self, names: &[&str]) -> Option<Attr> {
        let r = self.s.read().unwrap();
        let mut cur = ROOT;
        for n in names {
            cur = r.dentry(cur, n).unwrap()?.ino;
        }
        r.inode(cur).unwrap().map(|i| i.attr)
    }
    fn slices(&self, ino: InodeId) -> Vec<Slice> {
        self.s.read().unwrap().chunk(ino, 0).unwrap()
    }
    fn refs(&self, id: u128) -> Option<u32> {
        self.s.read().unwrap().block(BlockId(id)).unwrap().map(|b| b.refs)
    }
    fn gc(&self, node: u64) -> Vec<BlockId> {
        self.s.read().unwrap().gc_for_node(NodeId(node), 1000).unwrap()
    }
}

/// /d: a (blocks 1, 2), b (block 3), h = hard link of a, s (inline), l -> a, sub/c (block 4).
fn tree(t: &T) -> (InodeId, InodeId, InodeId) {
    let d = t.mkdir(ROOT, "d").ino;
    let a = t.create(d, "a").ino;
    t.commit(a, &[(1, 100), (2, 50)]).expect("commit a");
    let b = t.create(d, "b").ino;
    t.commit(b, &[(3, 10)]).expect("commit b");
    t.run(Command::Link { ino: a, new_parent: d, new_name: "h".into(), now: ts(3) }).expect("link");
    let s = t.create(d, "s").ino;
    t.inline(s, b"small");
    t.run(Command::Symlink { parent: d, name: "l".into(), target: "a".into(), uid: 0, gid: 0, now: ts(3) })
        .expect("symlink");
    let x = Command::SetXattr { ino: a, name: "user.k".into(), value: b"v".to_vec(), mode: XattrMode::Any, now: ts(3) };
    t.run(x).expect("xattr");
    let sub = t.mkdir(d, "sub").ino;
    let c = t.create(sub, "c").ino;
    t.commit(c, &[(4, 20)]).expect("commit c");
    (d, a, b)
}

#[test]
fn a_snapshot_copies_the_tree_shares_blocks_and_keeps_links() {
    let t = T::new();
    let (d, a, _) = tree(&t);
    let made = match t.create_snap(d, "s1").expect("snapshot") {
        CommandResult::Attr(a) => a,
        other => panic!("{other:?}"),
    };
    assert!(made.ino.in_snapshot());
    assert_eq!((made.perm, made.uid, made.nlink), (0o750, 3, 3), "attributes of /d, one subdirectory");
    let dir = t.path(&[SNAPSHOTS_DIR]).expect("/.snapshots");
    assert!(dir.ino.in_snapshot() && dir.kind == FileKind::Dir && dir.nlink == 3);
    let sa = t.path(&[SNAPSHOTS_DIR, "s1", "a"]).expect("a in the snapshot");
    let sh = t.path(&[SNAPSHOTS_DIR, "s1", "h"]).expect("h in the snapshot");
    assert!(sa.ino.in_snapshot() && sa.ino != a);
    assert_eq!((sh.ino, sa.nlink, sa.size), (sa.ino, 2, 150), "the hard link stays one inode");
    assert_eq!(t.slices(sa.ino), t.slices(a), "same slices, same blocks");
    let ss = t.path(&[SNAPSHOTS_DIR, "s1", "s"]).unwrap();
    assert_eq!(t.slices(ss.ino)[0].inline.as_ref().unwrap().data, b"small", "inline data copied by value");
    let sl = t.path(&[SNAPSHOTS_DIR, "s1", "l"]).unwrap();
    assert_eq!(t.s.read().unwrap().inode(sl.ino).unwrap().unwrap().target.as_deref(), Some("a"));
    assert_eq!(t.s.read().unwrap().xattr(sa.ino, "user.k").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(t.path(&[SNAPSHOTS_DIR, "s1", "sub", "c"]).is_some());
    for id in 1..=4 {
        assert_eq!(t.refs(id), Some(2), "block {id}: the live file and the snapshot");
    }
    let l = list(&t.s.read().unwrap()).unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!((l[0].name.as_str(), l[0].source.as_str(), l[0].files, l[0].dirs), ("s1", "/d", 4, 1));
    assert_eq!(l[0].bytes, 150 + 10 + 5 + 20);
    assert_eq!(l[0].exclusive_bytes, 0, "everything is shared with the live tree");
}

#[test]
fn live_changes_leave_the_snapshot_and_gc_never_takes_its_blocks() {
    let t = T::new();
    let (d, a, b) = tree(&t);
    t.create_snap(d, "s1").expect("snapshot");
    // Overwrite a (blocks 1, 2 hidden by block 5), delete b and the hard link.
    t.commit(a, &[(5, 150)]).expect("overwrite");
    t.run(Command::Unlink { parent: d, name: "b".into(), now: ts(11) }).expect("unlink b");
    t.run(Command::Unlink { parent: d, name: "h".into(), now: ts(11) }).expect("unlink h");
    assert!(t.gc(1).is_empty() && t.gc(2).is_empty(), "every old block is still the snapshot's");
    assert_eq!((t.refs(1), t.refs(3), t.refs(5)), (Some(1), Some(1), Some(1)));
    let sa = t.path(&[SNAPSHOTS_DIR, "s1", "a"]).unwrap();
    assert_eq!(t.slices(sa.ino)[0].blocks.iter().map(|b| b.id.0).collect::<Vec<_>>(), vec![1, 2]);
    assert!(t.path(&[SNAPSHOTS_DIR, "s1", "b"]).is_some());
    assert!(t.s.read().unwrap().inode(b).unwrap().is_none(), "the live b is gone");
    let l = list(&t.s.read().unwrap()).unwrap();
    assert_eq!(l[0].exclusive_bytes, (100 + 50 + 10) * 2, "blocks 1, 2, 3 on two nodes each");
    // Deleting the snapshot frees exactly those.
    t.snap(SnapCmd::Delete { name: "s1".into(), now: ts(12) }).expect("delete");
    let mut gone = t.gc(1);
    gone.sort();
    assert_eq!(gone, vec![BlockId(1), BlockId(2), BlockId(3)]);
    assert_eq!((t.refs(4), t.refs(5)), (Some(1), Some(1)), "live blocks stay");
    assert!(t.path(&[SNAPSHOTS_DIR, "s1"]).is_none());
    assert_eq!(t.path(&[SNAPSHOTS_DIR]).unwrap().nlink, 2);
    assert!(list(&t.s.read().unwrap()).unwrap().is_empty());
    let r = t.s.read().unwrap();
    let left = r.open_table(INODES).unwrap();
    use redb::ReadableTable;
    let snap_inodes = left.iter().unwrap().filter(|i| InodeId(i.as_ref().unwrap().0.value()).in_snapshot()).count();
    assert_eq!(snap_inodes, 1, "only /.snapshots itself is left");
}

#[test]
fn snapshots_are_read_only() {
    let t = T::new();
    let (d, _, _) = tree(&t);
    t.create_snap(d, "s1").expect("snapshot");
    let dir = t.path(&[SNAPSHOTS_DIR]).unwrap().ino;
    let root = t.path(&[SNAPSHOTS_DIR, "s1"]).unwrap().ino;
    let sa = t.path(&[SNAPSHOTS_DIR, "s1", "a"]).unwrap().ino;
    let ro = |c: Command| {
        let what = format!("{c:?}");
        match t.run(c) {
            Err(FsError::ReadOnly { .. }) => {}
            other => panic!("{what}: expected ReadOnly, got {other:?}"),
        }
    };
    ro(Command::Mkdir { parent: root, name: "x".into(), perm: 0o755, uid: 0, gid: 0, now: ts(11) });
    ro(Command::Mkdir { parent: dir, name: "x".into(), perm: 0o755, uid: 0, gid: 0, now: ts(11) });
    ro(Command::Create {
        parent: root,
        name: "a".into(),
        perm: 0o644,
        uid: 0,
        gid: 0,
        exclusive: false,
        now: ts(11),
        open: None,
    });
    ro(Command::Unlink { parent: root, name: "a".into(), now: ts(11) });
    ro(Command::Rmdir { parent: root, name: "sub".into(), now: ts(11) });
    ro(Command::Rmdir { parent: ROOT, name: SNAPSHOTS_DIR.into(), now: ts(11) });
    ro(Command::Rmdir { parent: dir, name: "s1".into(), now: ts(11) });
    let mv = |p: InodeId, n: &str, np: InodeId, nn: &str| Command::Rename {
        parent: p,
        name: n.into(),
        new_parent: np,
        new_name: nn.into(),
        mode: RenameMode::Replace,
        now: ts(11),
    };
    ro(mv(root, "a", d, "stolen"));
    ro(mv(d, "a", root, "planted"));
    ro(mv(ROOT, SNAPSHOTS_DIR, ROOT, "other"));
    ro(mv(d, "b", ROOT, SNAPSHOTS_DIR));
    ro(Command::Link { ino: sa, new_parent: d, new_name: "x".into(), now: ts(11) });
    ro(Command::SetAttr { ino: sa, set: SetAttr { size: Some(0), ..Default::default() }, now: ts(11) });
    ro(Command::SetAttr { ino: root, set: SetAttr { perm: Some(0o777), ..Default::default() }, now: ts(11) });
    ro(Command::RemoveXattr { ino: sa, name: "user.k".into(), now: ts(11) });
    // A deduplicated commit (referencing a block stored before) is a write too.
    ro(Command::Dedup(super::dedup::DedupCommand::CommitWrite {
        ino: sa,
        slices: vec![],
        min_size: 1,
        mtime: ts(11),
        bad: vec![],
        fps: vec![],
        now: ts(11),
    }));
    match t.commit(sa, &[(9, 10)]) {
        Err(FsError::ReadOnly { .. }) => {}
        other => panic!("commit into a snapshot: {other:?}"),
    }
    assert_eq!(t.refs(9), None, "the refused commit left nothing");
    assert!(t.path(&[SNAPSHOTS_DIR, "s1", "a"]).is_some());
}

#[test]
fn errors_are_clear_and_change_nothing() {
    let t = T::new();
    let (d, a, _) = tree(&t);
    t.create_snap(d, "s1").expect("snapshot");
    assert!(matches!(t.create_snap(d, "s1"), Err(FsError::AlreadyExists { .. })));
    assert!(matches!(t.create_snap(a, "s2"), Err(FsError::NotADirectory { .. })));
    assert!(matches!(t.create_snap(d, "a/b"), Err(FsError::InvalidArgument { .. })));
    assert!(matches!(t.create_snap(d, ".."), Err(FsError::InvalidArgument { .. })));
    let in_snap = t.path(&[SNAPSHOTS_DIR, "s1"]).unwrap().ino;
    assert!(matches!(t.create_snap(in_snap, "s3"), Err(FsError::InvalidArgument { .. })));
    let del = |n: &str| t.snap(SnapCmd::Delete { name: n.into(), now: ts(12) });
    assert!(matches!(del("nope"), Err(FsError::NotFound { .. })));
    let restore = |n: &str, target| t.snap(SnapCmd::Restore { name: n.into(), target, now: ts(12) });
    assert!(matches!(restore("nope", d), Err(FsError::NotFound { .. })));
    assert!(matches!(restore("s1", in_snap), Err(FsError::ReadOnly { .. })));
    assert!(matches!(restore("s1", a), Err(FsError::NotADirectory { .. })));
    assert_eq!(list(&t.s.read().unwrap()).unwrap().len(), 1);
    assert_eq!(t.refs(1), Some(2));
    // A live `/.snapshots` blocks snapshots until it is renamed.
    let t = T::new();
    let d = t.mkdir(ROOT, "d").ino;
    t.mkdir(ROOT, SNAPSHOTS_DIR);
    assert!(matches!(t.create_snap(d, "s1"), Err(FsError::AlreadyExists { .. })));
}

#[test]
fn restore_brings_back_the_tree_and_frees_what_only_the_live_tree_held() {
    let t = T::new();
    let (d, a, _) = tree(&t);
    t.create_snap(d, "s1").expect("snapshot");
    t.commit(a, &[(5, 150)]).expect("overwrite a");
    t.run(Command::Unlink { parent: d, name: "b".into(), now: ts(11) }).expect("unlink b");
    let n = t.create(d, "new").ino;
    t.commit(n, &[(6, 30)]).expect("commit new");
    t.snap(SnapCmd::Restore { name: "s1".into(), target: d, now: ts(13) }).expect("restore");
    assert!(t.path(&["d", "new"]).is_none(), "what the tree gained is gone");
    let ra = t.path(&["d", "a"]).expect("a is back");
    let rh = t.path(&["d", "h"]).expect("h is back");
    assert!(!ra.ino.in_snapshot(), "restored files are live (writable) inodes");
    assert_eq!((ra.ino, ra.nlink, ra.size), (rh.ino, 2, 150));
    assert_eq!(t.slices(ra.ino)[0].blocks.iter().map(|b| b.id.0).collect::<Vec<_>>(), vec![1, 2]);
    assert!(t.path(&["d", "b"]).is_some() && t.path(&["d", "sub", "c"]).is_some());
    assert_eq!(t.path(&["d"]).unwrap().nlink, 3);
    let mut gone = t.gc(2);
    gone.sort();
    assert_eq!(gone, vec![BlockId(5), BlockId(6)], "only the blocks nothing else refers to");
    assert_eq!((t.refs(1), t.refs(3), t.refs(4)), (Some(2), Some(2), Some(2)));
    // The restored tree is an ordinary one, and the snapshot outlives it.
    t.commit(ra.ino, &[(7, 150)]).expect("write into the restored file");
    t.snap(SnapCmd::Delete { name: "s1".into(), now: ts(14) }).expect("delete");
    assert_eq!(t.refs(1), None, "1 and 2 hidden by block 7 in the live file, gone with the snapshot");
    assert_eq!((t.refs(3), t.refs(4), t.refs(7)), (Some(1), Some(1), Some(1)));
    // Restoring the root keeps /.snapshots.
    t.create_snap(d, "s2").expect("snapshot 2");
    t.snap(SnapCmd::Restore { name: "s2".into(), target: ROOT, now: ts(15) }).expect("restore into /");
    assert!(t.path(&[SNAPSHOTS_DIR, "s2", "a"]).is_some() && t.path(&["a"]).is_some());
    assert!(t.path(&["d"]).is_none());
}

#[test]
fn snapshot_records_travel_in_the_raft_snapshot() {
    let t = T::new();
    let (d, _, _) = tree(&t);
    t.create_snap(d, "s1").expect("snapshot");
    let (blob, last, m) = t.s.dump().expect("dump");
    let other = StateStore::in_memory().unwrap();
    other.install(&blob, last, &m).expect("install");
    let r = other.read().unwrap();
    assert_eq!(list(&r).unwrap(), list(&t.s.read().unwrap()).unwrap());
    check_block_refs(&r).expect("invariants hold after install");
    drop(r);
    let t2 = T { s: other };
    t2.snap(SnapCmd::Delete { name: "s1".into(), now: ts(12) }).expect("delete on the installed copy");
    // A new snapshot on the copy does not reuse the numbers of the first one.
    t2.create_snap(d, "s2").expect("snapshot on the installed copy");
    let r = t2.s.read().unwrap();
    let root2 = t2.path(&[SNAPSHOTS_DIR, "s2"]).unwrap().ino;
    assert!(root2.0 >= r.dentry(ROOT, SNAPSHOTS_DIR).unwrap().unwrap().ino.0 + 8);
}

#[test]
fn the_invariant_checker_catches_a_wrong_refcount_and_a_queued_live_copy() {
    let t = T::new();
    let (d, _, _) = tree(&t);
    t.create_snap(d, "s1").expect("snapshot");
    let txn = t.s.db().begin_write().unwrap();
    data::put_block(&txn, BlockId(1), &BlockRec { len: 100, refs: 1, replicas: vec![NodeId(1), NodeId(2)] }).unwrap();
    txn.commit().unwrap();
    let err = check_block_refs(&t.s.read().unwrap()).expect_err("refs 1 for 2 references");
    assert!(err.contains("refs 1 but 2"), "{err}");
    let txn = t.s.db().begin_write().unwrap();
    data::put_block(&txn, BlockId(1), &BlockRec { len: 100, refs: 2, replicas: vec![NodeId(1), NodeId(2)] }).unwrap();
    data::gc_add(&txn, NodeId(2), BlockId(3)).unwrap();
    txn.commit().unwrap();
    let err = check_block_refs(&t.s.read().unwrap()).expect_err("a referenced copy queued for deletion");
    assert!(err.contains("queued for deletion"), "{err}");
}

#[test]
fn a_tree_over_the_entry_bound_is_refused_with_a_clear_error() {
    let t = T::new();
    let (d, _, _) = tree(&t);
    let r = t.s.read().unwrap();
    let all = super::snapshots::walk_at_most(&r, d, 100).expect("7 entries");
    assert_eq!(all.len(), 7, "a, b, h, s, l, sub, sub/c");
    match super::snapshots::walk_at_most(&r, d, 6) {
        Err(FsError::OutOfRange { reason }) => assert!(reason.contains("more than 6 entries"), "{reason}"),
        other => panic!("expected OutOfRange, got {other:?}"),
    }
}

/// The cost of the O(entries) copy (run by hand: `cargo nextest run -p distfs-meta
/// --run-ignored only snapshot_cost --no-capture`); figures in docs/BENCHMARKS.md.
#[test]
#[ignore]
fn snapshot_cost_of_many_entries() {
    let t = T { s: StateStore::in_memory().expect("store") };
    let format = Format { chunk_size: 1 << 20, block_size: 64 << 10, replication: 2 };
    t.s.apply_entry(None, None, Some(&Command::Format { format, now: ts(1) })).unwrap().unwrap().unwrap();
    let run = |c: Command| t.s.apply_entry(None, None, Some(&c)).unwrap().unwrap().expect("command");
    let d = match run(Command::Mkdir { parent: ROOT, name: "d".into(), perm: 0o755, uid: 0, gid: 0, now: ts(2) }) {
        CommandResult::Attr(a) => a.ino,
        other => panic!("{other:?}"),
    };
    let n = 50_000u64;
    for i in 0..n {
        let f = match run(Command::Create {
            parent: d,
            name: format!("f{i}"),
            perm: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
            now: ts(2),
            open: None,
        }) {
            CommandResult::Attr(a) => a.ino,
            other => panic!("{other:?}"),
        };
        let blocks = vec![WrittenBlock { block: BlockRef { id: BlockId(i as u128 + 1), len: 10 }, replicas: vec![] }];
        run(Command::CommitWrite {
            ino: f,
            slices: vec![SliceWrite { chunk: 0, offset: 0, len: 10, blocks, inline: None }],
            min_size: 10,
            mtime: ts(3),
            bad: vec![],
            now: ts(3),
        });
    }
    let start = std::time::Instant::now();
    run(Command::Snapshot(SnapCmd::Create { source: d, path: "/d".into(), name: "s".into(), now: ts(4) }));
    let create = start.elapsed();
    let start = std::time::Instant::now();
    let l = list(&t.s.read().unwrap()).unwrap();
    let listed = start.elapsed();
    assert_eq!(l[0].files, n);
    let start = std::time::Instant::now();
    run(Command::Snapshot(SnapCmd::Delete { name: "s".into(), now: ts(5) }));
    let delete = start.elapsed();
    check_block_refs(&t.s.read().unwrap()).expect("invariants");
    eprintln!("snapshot of {n} files with one block each: create {create:?}, list {listed:?}, delete {delete:?}");
}
