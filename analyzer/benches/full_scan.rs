//! Wall time of the full default scan (every catalog instruction in 16-, 32-
//! and 64-bit mode, umip=off and umip=on, the whole sampled-state matrix) on
//! Unicorn, with one worker per CPU. Run with `cargo bench --bench full_scan`;
//! POPEK_BENCH_ROUNDS sets how many scans are timed (default 1).

use analyzer::engine::{self, EngineKind};
use analyzer::{catalog, scan, Config, Mode};
use std::time::Instant;

fn main() {
    // `cargo test --benches` runs bench targets too: do nothing there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = std::env::var("POPEK_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let t = Instant::now();
    let cat = catalog::build_all(&Mode::DEFAULT_SCAN);
    println!(
        "catalog: {} entries in {:.2} s",
        cat.entries.len(),
        t.elapsed().as_secs_f64()
    );
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    for round in 0..rounds {
        let t = Instant::now();
        let records = match scan::run_scan(
            &cat.entries,
            &Config::DEFAULTS,
            || engine::open(EngineKind::Unicorn),
            0,
            false,
        ) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("full_scan: {e}");
                std::process::exit(1);
            }
        };
        let secs = t.elapsed().as_secs_f64();
        let runs: usize = records.iter().map(|r| r.verdict.runs).sum();
        println!(
            "full default scan, round {}: {} records, {} runs in {:.2} s on {} CPUs = {:.0} runs/s",
            round + 1,
            records.len(),
            runs,
            secs,
            cpus,
            runs as f64 / secs
        );
    }
}
