//! Writes applied at most once (`Command::Once`) and registration tokens, over an
//! in-memory store without Raft: what a client sees when its retry reaches the state
//! machine after the first attempt was applied.

use super::*;
use crate::state::{Dump, StateStore};

const ROOT: InodeId = InodeId::ROOT;

fn ts(s: i64) -> Timestamp {
    Timestamp { secs: s, nanos: 0 }
}

fn store() -> StateStore {
    let s = StateStore::in_memory().expect("store");
    let format = Format { chunk_size: 1 << 20, block_size: 64 << 10, replication: 3 };
    run(&s, &Command::Format { format, now: ts(1) }).expect("format");
    s
}

fn run(s: &StateStore, c: &Command) -> FsResult<CommandResult> {
    s.apply_entry(None, None, Some(c)).expect("store works").expect("a command")
}

/// `cmd` as client `client` sends it in `slot` with `seq`, at leader time `at`.
fn once(client: u64, slot: u32, seq: u64, at: i64, cmd: Command) -> Command {
    Command::Once { client, slot, seq, now: ts(at), cmd: Box::new(cmd) }
}

fn create(name: &str, exclusive: bool) -> Command {
    Command::Create { parent: ROOT, name: name.into(), perm: 0o644, uid: 0, gid: 0, exclusive, now: ts(2), open: None }
}

fn names(s: &StateStore) -> Vec<String> {
    let (entries, _) = s.read().unwrap().readdir(ROOT, None, 100).unwrap();
    entries.into_iter().map(|e| e.name).collect()
}

fn ino_of(r: FsResult<CommandResult>) -> InodeId {
    match r {
        Ok(CommandResult::Attr(a)) => a.ino,
        other => panic!("expected Attr, got {other:?}"),
    }
}

#[test]
fn a_retried_create_answers_the_same_inode_and_creates_one_file() {
    let s = store();
    let first = ino_of(run(&s, &once(7, 0, 1, 10, create("f", true))));
    // The retry (same id) finds the name taken by its own first attempt: same answer.
    let again = ino_of(run(&s, &once(7, 0, 1, 11, create("f", true))));
    assert_eq!(first, again);
    assert_eq!(names(&s), ["f"]);
    // Nothing else was allocated: the next create gets the next inode number.
    let next = ino_of(run(&s, &once(7, 0, 2, 12, create("g", true))));
    assert_eq!(next.0, first.0 + 1);
    // Without the id the same create is applied again, as before.
    assert!(matches!(run(&s, &create("f", true)), Err(FsError::AlreadyExists { .. })));
}

#[test]
fn retried_unlink_rename_and_mkdir_succeed_as_if_run_once() {
    let s = store();
    let a = ino_of(run(&s, &create("a", true)));
    run(&s, &create("b", true)).unwrap();
    let unlink = Command::Unlink { parent: ROOT, name: "b".into(), now: ts(3) };
    assert_eq!(run(&s, &once(1, 3, 10, 10, unlink.clone())), Ok(CommandResult::Done));
    assert_eq!(run(&s, &once(1, 3, 10, 10, unlink)), Ok(CommandResult::Done));
    let rename = Command::Rename {
        parent: ROOT,
        name: "a".into(),
        new_parent: ROOT,
        new_name: "c".into(),
        mode: RenameMode::Replace,
        now: ts(4),
    };
    assert_eq!(run(&s, &once(1, 3, 11, 11, rename.clone())), Ok(CommandResult::Done));
    assert_eq!(run(&s, &once(1, 3, 11, 11, rename)), Ok(CommandResult::Done));
    let mkdir = Command::Mkdir { parent: ROOT, name: "d".into(), perm: 0o755, uid: 0, gid: 0, now: ts(5) };
    let d = ino_of(run(&s, &once(1, 4, 12, 12, mkdir.clone())));
    assert_eq!(ino_of(run(&s, &once(1, 4, 12, 12, mkdir))), d);
    assert_eq!(names(&s), ["c", "d"]);
    assert_eq!(s.read().unwrap().dentry(ROOT, "c").unwrap().map(|e| e.ino), Some(a));
}

#[test]
fn a_final_error_is_kept_and_a_retryable_one_is_not() {
    let s = StateStore::in_memory().expect("store");
    // Before the format: `Unavailable` (retry later) is not stored, so the same request
    // applies once the file system exists.
    let early = run(&s, &once(5, 0, 1, 10, create("x", true)));
    assert!(matches!(early, Err(FsError::Unavailable { .. })), "{early:?}");
    let format = Format { chunk_size: 1 << 20, block_size: 64 << 10, replication: 3 };
    run(&s, &Command::Format { format, now: ts(1) }).unwrap();
    ino_of(run(&s, &once(5, 0, 1, 11, create("x", true))));
    // An exclusive create of a taken name fails for good, and its retry fails the same
    // way even after the name is gone (it answers what happened, it does not run again).
    let refused = run(&s, &once(5, 1, 2, 12, create("x", true)));
    assert!(matches!(refused, Err(FsError::AlreadyExists { .. })), "{refused:?}");
    run(&s, &Command::Unlink { parent: ROOT, name: "x".into(), now: ts(13) }).unwrap();
    assert_eq!(run(&s, &once(5, 1, 2, 14, create("x", true))), refused);
    assert!(names(&s).is_empty());
}

#[test]
fn a_stale_attempt_of_a_finished_call_is_refused_without_applying() {
    let s = store();
    run(&s, &once(9, 0, 1, 10, create("one", true))).unwrap();
    // The client finished call 1 and reused the slot for call 2 ...
    run(&s, &once(9, 0, 2, 11, create("two", true))).unwrap();
    // ... then an old attempt of call 1 reaches the log (it was stuck at a deposed
    // leader, say): refused, nothing applied, call 2's result kept.
    run(&s, &Command::Unlink { parent: ROOT, name: "one".into(), now: ts(12) }).unwrap();
    let stale = run(&s, &once(9, 0, 1, 13, create("one", true)));
    assert!(matches!(&stale, Err(FsError::InvalidArgument { reason }) if reason.contains("stale retry")), "{stale:?}");
    assert_eq!(names(&s), ["two"]);
    let two = s.read().unwrap().dentry(ROOT, "two").unwrap().unwrap().ino;
    assert_eq!(ino_of(run(&s, &once(9, 0, 2, 14, create("two", true)))), two);
    // A slot outside the client's range is refused too.
    let bad = run(&s, &once(9, distfs_proto::ONCE_SLOTS, 3, 15, create("three", true)));
    assert!(matches!(bad, Err(FsError::Protocol { .. })), "{bad:?}");
    assert_eq!(names(&s), ["two"]);
}

#[test]
fn idle_clients_are_dropped_by_leader_time_a_few_per_entry() {
    let s = store();
    for client in 1..=6 {
        run(&s, &once(client, 0, 1, 100, create(&format!("f{client}"), true))).unwrap();
    }
    let kept = |s: &StateStore| -> Vec<u64> {
        let r = s.read().unwrap();
        let t = r.open_table(CLIENTS).unwrap();
        t.iter().unwrap().map(|i| i.unwrap().0.value()).collect()
    };
    assert_eq!(kept(&s), [1, 2, 3, 4, 5, 6]);
    // Still within the TTL: nobody is dropped.
    run(&s, &once(50, 0, 1, 100 + CLIENT_TTL_SECS, create("g", true))).unwrap();
    assert_eq!(kept(&s).len(), 7);
    // Past it: the oldest EXPIRE_PER_APPLY clients go with this entry, the rest with the next.
    run(&s, &once(51, 0, 1, 101 + CLIENT_TTL_SECS, create("h", true))).unwrap();
    assert_eq!(kept(&s), [5, 6, 50, 51]);
    run(&s, &once(51, 0, 2, 102 + CLIENT_TTL_SECS, create("i", true))).unwrap();
    assert_eq!(kept(&s), [50, 51]);
    // A dropped client's results are gone with it: its id applies as new.
    let r = s.read().unwrap();
    let t = r.open_table(RESULTS).unwrap();
    assert_eq!(lookup(&t, OnceKey { client: 1, slot: 0, seq: 1 }).unwrap(), Lookup::New);
    assert!(matches!(lookup(&t, OnceKey { client: 51, slot: 0, seq: 2 }).unwrap(), Lookup::Done(Ok(_))));
}

#[test]
fn stored_results_and_tokens_survive_a_snapshot_install() {
    let s = store();
    let f = ino_of(run(&s, &once(3, 2, 40, 10, create("f", true))));
    let token = 0x1234_5678_9abc_def0_1122_3344_5566_7788u128;
    let reg = Command::RegisterNodeToken { token, node: None, addr: "a:1".into(), zone: "z".into(), capacity: 1 };
    let node = run(&s, &reg).unwrap();
    let (blob, last, membership) = s.dump().unwrap();
    let restored = StateStore::in_memory().unwrap();
    restored.install(&blob, last, &membership).unwrap();
    let dumped = Dump::from_bytes(&blob).unwrap().once;
    assert_eq!(dumped.results.len(), 1);
    assert_eq!(dumped, Dump::read(&restored.read().unwrap()).unwrap().once);
    // The retry reaching the new member is still answered from the stored result ...
    assert_eq!(ino_of(run(&restored, &once(3, 2, 40, 11, create("f", true)))), f);
    assert_eq!(names(&restored), ["f"]);
    // ... and the node's token still names its id.
    assert_eq!(run(&restored, &reg).unwrap(), node);
    // Idle clients are still found by age after the install.
    run(&restored, &once(4, 0, 1, 11 + CLIENT_TTL_SECS, create("g", true))).unwrap();
    let r = restored.read().unwrap();
    assert_eq!(lookup(&r.open_table(RESULTS).unwrap(), OnceKey { client: 3, slot: 2, seq: 40 }).unwrap(), Lookup::New);
}

#[test]
fn a_version_3_snapshot_still_installs() {
    let s = store();
    run(&s, &create("old", true)).unwrap();
    let d = Dump::read(&s.read().unwrap()).unwrap();
    let mut v3 = vec![3u8];
    v3.extend(postcard::to_stdvec(&d).unwrap());
    v3.extend(postcard::to_stdvec(&d.ext).unwrap());
    v3.extend(postcard::to_stdvec(&d.dedup).unwrap());
    let back = Dump::from_bytes(&v3).unwrap();
    assert_eq!(back.inodes, d.inodes);
    assert_eq!(back.once, OnceDump::default());
    let restored = StateStore::in_memory().unwrap();
    restored.install(&v3, None, &Default::default()).unwrap();
    assert_eq!(names(&restored), ["old"]);
}

#[test]
fn the_same_token_registers_as_the_same_node() {
    let s = store();
    let reg = |token: u128, node: Option<NodeId>, addr: &str| Command::RegisterNodeToken {
        token,
        node,
        addr: addr.into(),
        zone: "z".into(),
        capacity: 10,
    };
    let id = |r: FsResult<CommandResult>| match r {
        Ok(CommandResult::Registered(n)) => n,
        other => panic!("{other:?}"),
    };
    // The answer to the first registration was lost: the node, which never learnt its
    // id, registers again with its token and gets the same id, at its new address.
    let first = id(run(&s, &reg(1, None, "a:1")));
    assert_eq!(id(run(&s, &reg(1, None, "a:2"))), first);
    let other = id(run(&s, &reg(2, None, "b:1")));
    assert_ne!(other, first);
    let nodes = s.read().unwrap().nodes().unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert_eq!(s.read().unwrap().node(first).unwrap().unwrap().addr, "a:2");
    // A node that was removed cannot come back, neither by its token nor by its id: it
    // may still hold the blocks the cluster dropped from its map.
    run(&s, &Command::RemoveNode { node: first }).unwrap();
    for r in [reg(1, None, "a:1"), reg(1, Some(first), "a:1"), reg(3, Some(first), "a:1")] {
        match run(&s, &r) {
            Err(FsError::PermissionDenied { what }) => assert!(what.contains("was removed"), "{what}"),
            other => panic!("a removed node registered again: {other:?}"),
        }
    }
    assert_eq!(s.read().unwrap().nodes().unwrap().len(), 1);
    // With its data directory emptied it has a new token and no id: a new node.
    let fresh = id(run(&s, &reg(4, None, "a:1")));
    assert!(fresh != first && fresh != other, "{fresh}");
}
