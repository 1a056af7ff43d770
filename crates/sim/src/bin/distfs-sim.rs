//! `distfs-sim --seeds N [--first F] [--seed S] [--inject-ack-after-one]`: a campaign of
//! simulator runs; every failing seed is printed with the command that replays it.

use distfs_sim::{campaign, inject_ack_after_one, replay_command, run, SimConfig};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut seeds, mut first, mut one, mut bug) = (100u64, 0u64, None, false);
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
            other => {
                eprintln!("unknown argument {other}; usage: distfs-sim --seeds N [--first F] [--seed S] [--inject-ack-after-one]");
                return ExitCode::from(2);
            }
        }
    }
    inject_ack_after_one(bug);
    let cfg = SimConfig::default();
    let flag = if bug { " --inject-ack-after-one" } else { "" };
    if let Some(s) = one {
        return match run(s, cfg) {
            Ok(r) => {
                println!("seed {s}: ok {r:?}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("seed {s} FAILED: {e}\nreplay: {}{flag}", replay_command(s));
                ExitCode::FAILURE
            }
        };
    }
    let t = std::time::Instant::now();
    let failed = campaign(first, seeds, cfg);
    for (s, e) in &failed {
        println!("seed {s} FAILED: {e}\nreplay: {}{flag}", replay_command(*s));
    }
    println!("{seeds} seeds from {first}: {} failed in {:.1} s", failed.len(), t.elapsed().as_secs_f64());
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
