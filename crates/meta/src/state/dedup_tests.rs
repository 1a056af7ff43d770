//! Unit tests of the fingerprint table over an in-memory redb, without Raft: hit, miss,
//! freed meanwhile, decref to zero forgets the fingerprint, refcounts equal references,
//! snapshots carry the table, and directories hand their codec down.

use super::*;
use distfs_proto::WrittenBlock;
use distfs_types::{BlockId, BlockRef, FileKind};

fn ts(s: i64) -> Timestamp {
    Timestamp { secs: s, nanos: 0 }
}

fn fp(n: u8) -> Fingerprint {
    [n; 32]
}

struct T(StateStore);

impl T {
    fn new() -> T {
        let t = T(StateStore::in_memory().expect("store"));
        let format = Format { chunk_size: 1 << 20, block_size: 64 << 10, replication: 3 };
        t.run(Command::Format { format, now: ts(1) }).expect("format");
        t
    }
    /// Applies `c`, then sweeps as a leader with nothing open would.
    fn run(&self, c: Command) -> FsResult<CommandResult> {
        let r = self.0.apply_entry(None, None, Some(&c)).expect("store works").expect("a command");
        crate::state::sweep_orphans(&self.0, &mut crate::state::test_open_table());
        r
    }
    fn create(&self, parent: InodeId, name: &str, kind: FileKind) -> InodeId {
        let now = ts(2);
        let (perm, uid, gid, name) = (0o755, 0, 0, name.to_string());
        let c = match kind {
            FileKind::Dir => Command::Mkdir { parent, name, perm, uid, gid, now },
            _ => Command::Create { parent, name, perm, uid, gid, exclusive: true, now, open: None },
        };
        match self.run(c) {
            Ok(CommandResult::Attr(a)) => a.ino,
            other => panic!("create: {other:?}"),
        }
    }
    /// Commits one slice at offset 0 of chunk 0 made of `blocks` (id, fingerprint,
    /// existing); a new block is written to nodes 1 and 2, a reference names none.
    fn commit(&self, ino: InodeId, blocks: &[(u128, u8, bool)]) -> FsResult<CommandResult> {
        let len = 1000u32;
        let wbs = blocks
            .iter()
            .map(|&(id, _, existing)| WrittenBlock {
                block: BlockRef { id: BlockId(id), len },
                replicas: if existing { vec![] } else { vec![NodeId(1), NodeId(2)] },
            })
            .collect();
        let fps = blocks.iter().map(|&(id, f, existing)| BlockFp { block: BlockId(id), fp: fp(f), existing }).collect();
        let slices =
            vec![SliceWrite { chunk: 0, offset: 0, len: len as u64 * blocks.len() as u64, blocks: wbs, inline: None }];
        self.run(Command::Dedup(DedupCommand::CommitWrite {
            ino,
            slices,
            min_size: 0,
            mtime: ts(3),
            bad: vec![],
            fps,
            now: ts(3),
        }))
    }
    fn lookup(&self, f: u8) -> Option<BlockRef> {
        lookup(&self.0.read().unwrap(), &[fp(f)]).unwrap().remove(0)
    }
    fn block(&self, id: u128) -> Option<BlockRec> {
        self.0.read().unwrap().block(BlockId(id)).unwrap()
    }
    fn unlink(&self, parent: InodeId, name: &str) {
        self.run(Command::Unlink { parent, name: name.into(), now: ts(9) }).expect("unlink");
    }
    fn gc(&self, node: u64) -> Vec<BlockId> {
        self.0.read().unwrap().gc_for_node(NodeId(node), 1000).unwrap()
    }
}

#[test]
fn miss_then_hit_shares_one_block_and_counts_every_reference() {
    let t = T::new();
    assert_eq!(t.lookup(7), None, "an empty table finds nothing");
    let a = t.create(InodeId::ROOT, "a", FileKind::File);
    t.commit(a, &[(10, 7, false)]).expect("first write registers its fingerprint");
    assert_eq!(t.lookup(7), Some(BlockRef { id: BlockId(10), len: 1000 }));
    assert_eq!(t.lookup(8), None);

    // Ten files referencing the same block: one block, refcount = references.
    for i in 0..9 {
        let f = t.create(InodeId::ROOT, &format!("copy{i}"), FileKind::File);
        t.commit(f, &[(10, 7, true)]).expect("a reference commits");
    }
    let rec = t.block(10).expect("block");
    assert_eq!(rec.refs, 10);
    assert_eq!(rec.replicas, vec![NodeId(1), NodeId(2)], "a reference keeps the block's replicas");

    // Deleting nine keeps the block (and its fingerprint) for the tenth.
    for i in 0..9 {
        t.unlink(InodeId::ROOT, &format!("copy{i}"));
    }
    assert_eq!(t.block(10).expect("block").refs, 1);
    assert!(t.gc(1).is_empty());
    assert!(t.lookup(7).is_some());

    // The last reference goes: the block is queued for GC and its fingerprint forgotten
    // in the same transaction.
    t.unlink(InodeId::ROOT, "a");
    assert_eq!(t.block(10), None);
    assert_eq!(t.gc(1), vec![BlockId(10)]);
    assert_eq!(t.lookup(7), None);
    assert_eq!(fingerprint_count(&t.0.read().unwrap()).unwrap(), 0);
    assert!(t.0.read().unwrap().open_table(BLOCK_FPS).unwrap().get(10u128).unwrap().is_none());
}

#[test]
fn a_reference_to_a_block_freed_meanwhile_fails_and_changes_nothing() {
    let t = T::new();
    let a = t.create(InodeId::ROOT, "a", FileKind::File);
    t.commit(a, &[(10, 7, false)]).unwrap();
    let b = t.create(InodeId::ROOT, "b", FileKind::File);
    // The client looked up fingerprint 7 (hit: block 10), then "a" was deleted.
    t.unlink(InodeId::ROOT, "a");
    let before = t.0.read().unwrap().inode(b).unwrap().unwrap();
    match t.commit(b, &[(11, 9, false), (10, 7, true)]) {
        Err(FsError::BlockNotFound { block, .. }) => assert_eq!(block, BlockId(10)),
        other => panic!("expected BlockNotFound, got {other:?}"),
    }
    // Nothing of the failed commit stayed: no block 11, no fingerprint 9, file unchanged.
    assert_eq!(t.block(11), None);
    assert_eq!(t.lookup(9), None);
    assert_eq!(t.0.read().unwrap().inode(b).unwrap().unwrap(), before);
    assert_eq!(t.block(10), None, "a failed reference does not resurrect the block");
    // The client then writes the block for real under a new id: it commits.
    t.commit(b, &[(11, 9, false), (12, 7, false)]).expect("rewrite commits");
    assert_eq!(t.lookup(7).map(|r| r.id), Some(BlockId(12)));
}

#[test]
fn references_must_match_the_fingerprint_and_length_and_name_no_replicas() {
    let t = T::new();
    let a = t.create(InodeId::ROOT, "a", FileKind::File);
    t.commit(a, &[(10, 7, false)]).unwrap();
    let b = t.create(InodeId::ROOT, "b", FileKind::File);
    // Block 10 exists but is not stored under fingerprint 8.
    assert!(matches!(t.commit(b, &[(10, 8, true)]), Err(FsError::BlockNotFound { .. })));
    // A fingerprint for a block the commit does not carry.
    let slices = vec![];
    let c = DedupCommand::CommitWrite {
        ino: b,
        slices,
        min_size: 0,
        mtime: ts(3),
        bad: vec![],
        fps: vec![BlockFp { block: BlockId(10), fp: fp(7), existing: true }],
        now: ts(3),
    };
    assert!(matches!(t.run(Command::Dedup(c)), Err(FsError::InvalidArgument { .. })));
    assert_eq!(t.block(10).unwrap().refs, 1, "failed commits leave the refcount alone");
}

#[test]
fn a_second_copy_with_a_known_fingerprint_lives_on_its_own() {
    let t = T::new();
    let a = t.create(InodeId::ROOT, "a", FileKind::File);
    let b = t.create(InodeId::ROOT, "b", FileKind::File);
    t.commit(a, &[(10, 7, false)]).unwrap();
    // A racing writer wrote the same bytes as block 11: the table keeps block 10.
    t.commit(b, &[(11, 7, false)]).unwrap();
    assert_eq!(t.lookup(7).map(|r| r.id), Some(BlockId(10)));
    // Freeing the unregistered copy does not drop the registered fingerprint.
    t.unlink(InodeId::ROOT, "b");
    assert_eq!(t.lookup(7).map(|r| r.id), Some(BlockId(10)));
    t.unlink(InodeId::ROOT, "a");
    assert_eq!(t.lookup(7), None);
}

#[test]
fn an_overwrite_in_the_same_file_drops_the_old_fingerprint() {
    let t = T::new();
    let a = t.create(InodeId::ROOT, "a", FileKind::File);
    t.commit(a, &[(10, 7, false)]).unwrap();
    // The whole slice is overwritten by a new block: block 10 is freed.
    t.commit(a, &[(11, 8, false)]).unwrap();
    assert_eq!(t.block(10), None);
    assert_eq!(t.lookup(7), None);
    assert_eq!(t.lookup(8).map(|r| r.id), Some(BlockId(11)));
    // The same file referencing its own block twice in one slice: two references.
    let b = t.create(InodeId::ROOT, "b", FileKind::File);
    t.commit(b, &[(11, 8, true), (11, 8, true)]).unwrap();
    assert_eq!(t.block(11).unwrap().refs, 3);
}

#[test]
fn snapshots_carry_the_fingerprint_table() {
    let t = T::new();
    let a = t.create(InodeId::ROOT, "a", FileKind::File);
    t.commit(a, &[(10, 7, false), (11, 8, false)]).unwrap();
    let (blob, last, m) = t.0.dump().unwrap();
    let other = StateStore::in_memory().unwrap();
    other.install(&blob, last, &m).unwrap();
    let r = other.read().unwrap();
    assert_eq!(
        lookup(&r, &[fp(7), fp(8), fp(9)]).unwrap().iter().map(|b| b.map(|b| b.id)).collect::<Vec<_>>(),
        vec![Some(BlockId(10)), Some(BlockId(11)), None]
    );
    drop(r);
    // The reverse table was rebuilt: freeing the file forgets both fingerprints there too.
    other
        .apply_entry(None, None, Some(&Command::Unlink { parent: InodeId::ROOT, name: "a".into(), now: ts(9) }))
        .unwrap()
        .unwrap()
        .unwrap();
    crate::state::sweep_orphans(&other, &mut crate::state::test_open_table());
    assert_eq!(fingerprint_count(&other.read().unwrap()).unwrap(), 0);
}

#[test]
fn new_entries_inherit_the_directory_codec() {
    let t = T::new();
    let d = t.create(InodeId::ROOT, "z", FileKind::Dir);
    t.run(Command::SetXattr {
        ino: d,
        name: COMPRESSION_XATTR.into(),
        value: b"zstd".to_vec(),
        mode: distfs_proto::XattrMode::Any,
        now: ts(2),
    })
    .unwrap();
    let f = t.create(d, "f", FileKind::File);
    let sub = t.create(d, "sub", FileKind::Dir);
    let g = t.create(sub, "g", FileKind::File);
    let plain = t.create(InodeId::ROOT, "p", FileKind::File);
    let r = t.0.read().unwrap();
    for ino in [f, sub, g] {
        assert_eq!(r.xattr(ino, COMPRESSION_XATTR).unwrap().as_deref(), Some(&b"zstd"[..]));
    }
    assert_eq!(r.xattr(plain, COMPRESSION_XATTR).unwrap(), None);
}

#[test]
fn a_block_with_no_good_copy_left_is_not_offered() {
    let t = T::new();
    let a = t.create(InodeId::ROOT, "a", FileKind::File);
    t.commit(a, &[(10, 7, false)]).unwrap();
    let report = |node| {
        let bad = BadReplica { block: BlockId(10), node: NodeId(node), reason: "corrupt".into() };
        t.run(Command::ReportBadReplica { bad }).unwrap();
    };
    report(1);
    assert!(t.lookup(7).is_some(), "a block with a good copy left is offered");
    report(2);
    assert!(t.block(10).unwrap().replicas.is_empty());
    assert_eq!(t.lookup(7), None, "a new write stores the bytes anew instead");
}
