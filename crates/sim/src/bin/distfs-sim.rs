//! `distfs-sim [--raft] --seeds N [--first F] [--seed S] [--trace] [--inject-ack-after-one]
//! [--inject-log-skips-fsync]`: a campaign of simulator runs (the storage/metadata
//! harness, or with `--raft` the real openraft metadata group); every failing seed is
//! printed with the command that replays it.

use distfs_meta::raft::sim_bugs::{LOG_SKIPS_FSYNC, VOTE_NOT_SAVED};
use distfs_sim::raft::{raft_campaign, raft_replay_command, run_raft_traced, RaftSimConfig};
use distfs_sim::{campaign, inject_ack_after_one, replay_command, run, SimConfig};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

const USAGE: &str = "usage: distfs-sim [--raft] --seeds N [--first F] [--seed S] [--trace] \
                     [--inject-ack-after-one] [--inject-log-skips-fsync] [--inject-vote-not-saved]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut seeds, mut first, mut one, mut bug) = (100u64, 0u64, None, false);
    let (mut raft, mut trace, mut log_bug, mut vote_bug) = (false, false, false, false);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Option<u64> {
            let v = args.next().and_then(|v| v.parse().ok());
            if v.is_none() {
                eprintln!("{name} needs a number");
            }
            v
        };
        match a.as_str() {
            "--seeds" => match num("--seeds") {
                Some(v) => seeds = v,
                None => return ExitCode::from(2),
            },
            "--first" => match num("--first") {
                Some(v) => first = v,
                None => return ExitCode::from(2),
            },
            "--seed" => match num("--seed") {
                Some(v) => one = Some(v),
                None => return ExitCode::from(2),
            },
            "--inject-ack-after-one" => bug = true,
            "--inject-log-skips-fsync" => log_bug = true,
            "--inject-vote-not-saved" => vote_bug = true,
            "--raft" => raft = true,
            "--trace" => trace = true,
            other => {
                eprintln!("unknown argument {other}; {USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    inject_ack_after_one(bug);
    LOG_SKIPS_FSYNC.store(log_bug, Ordering::Relaxed);
    VOTE_NOT_SAVED.store(vote_bug, Ordering::Relaxed);
    let mut flag = String::new();
    if bug {
        flag.push_str(" --inject-ack-after-one");
    }
    if log_bug {
        flag.push_str(" --inject-log-skips-fsync");
    }
    if vote_bug {
        flag.push_str(" --inject-vote-not-saved");
    }
    let replay = |s: u64| if raft { raft_replay_command(s) } else { replay_command(s) };
    if let Some(s) = one {
        let r = if raft {
            run_raft_traced(s, RaftSimConfig::default(), trace).map(|r| format!("{r:?}"))
        } else {
            run(s, SimConfig::default()).map(|r| format!("{r:?}"))
        };
        return match r {
            Ok(r) => {
                println!("seed {s}: ok {r}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("seed {s} FAILED: {e}\nreplay: {}{flag}", replay(s));
                ExitCode::FAILURE
            }
        };
    }
    let t = std::time::Instant::now();
    let failed = if raft {
        raft_campaign(first, seeds, RaftSimConfig::default())
    } else {
        campaign(first, seeds, SimConfig::default())
    };
    for (s, e) in &failed {
        println!("seed {s} FAILED: {e}\nreplay: {}{flag}", replay(*s));
    }
    let what = if raft { "raft seeds" } else { "seeds" };
    println!("{seeds} {what} from {first}: {} failed in {:.1} s", failed.len(), t.elapsed().as_secs_f64());
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
