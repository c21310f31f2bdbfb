//! `baton-sim`: replay one seed (`--seed N`) or soak (`--soak --seeds N [--from N]`).
//! `--no-drain` runs without the failover drain, `--no-fence` with a drain that does not
//! fence the relays first.

use baton_sim::{run, SimConfig};
use std::process::ExitCode;
use std::time::Instant;

fn arg(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = SimConfig {
        drain: !args.iter().any(|a| a == "--no-drain"),
        fence: !args.iter().any(|a| a == "--no-fence"),
        reorder_in_link: args.iter().any(|a| a == "--reorder-in-link"),
        ..SimConfig::default()
    };
    if args.iter().any(|a| a == "--soak") {
        return soak(&args, cfg);
    }
    let Some(seed) = arg(&args, "--seed") else {
        eprintln!(
            "usage: baton-sim --seed N | --soak --seeds N [--from N] [--max-failures N] [--no-drain] [--no-fence]"
        );
        return ExitCode::from(2);
    };
    let w = baton_sim::World::new(seed, cfg);
    println!("seed {seed}: {:?}", w.par);
    match w.run() {
        Ok(o) => {
            println!("seed {seed}: ok {o:?}");
            ExitCode::SUCCESS
        }
        Err(v) => {
            println!("{v}");
            ExitCode::FAILURE
        }
    }
}

fn soak(args: &[String], cfg: SimConfig) -> ExitCode {
    let seeds = arg(args, "--seeds").unwrap_or(1_000_000);
    let from = arg(args, "--from").unwrap_or(0);
    let max_failures = arg(args, "--max-failures").unwrap_or(20);
    let t0 = Instant::now();
    let (mut failovers, mut gained, mut holds, mut missed, mut failures) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut ran = 0u64;
    let (mut relabelled, mut past_durable) = (0u64, 0u64);
    for (k, seed) in (from..from + seeds).enumerate() {
        ran += 1;
        match run(seed, cfg) {
            Ok(o) => {
                failovers += u64::from(o.failed_over);
                gained += u64::from(o.drain_gained > 0);
                holds += o.policy_holds;
                missed += u64::from(o.missed_reconnecting);
                relabelled += u64::from(o.relabelled > 0);
                past_durable += u64::from(o.released_past_durable > 0);
            }
            Err(v) => {
                failures += 1;
                println!("FAIL {v}");
                if failures >= max_failures {
                    println!("stopping after {failures} failures");
                    break;
                }
            }
        }
        if (k + 1) % 100_000 == 0 {
            let s = t0.elapsed().as_secs_f64();
            println!("{} seeds, {:.0} seeds/s", k + 1, (k + 1) as f64 / s);
        }
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{ran} seeds from {from} in {s:.1} s: {:.0} seeds/s; {failovers} failovers, {gained} where the drain gained restart points, {holds} policy holds, {missed} with a relay missed while reconnecting, {relabelled} with ops relabelled to a newer generation, {past_durable} with a release on resume past the standby's durable LSN; {failures} failing",
        ran as f64 / s
    );
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
