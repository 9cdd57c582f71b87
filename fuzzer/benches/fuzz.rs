//! Distinct instructions evaluated per second on Unicorn, one core: the
//! fuzzer's quick look (base state at both CPLs and the oracles) over
//! structured inputs.
//!
//! - `unicorn_64_structured_1000`: the same 1,000 inputs every iteration,
//!   their escalations cached once, every length an oracle compares
//!   measured (`Lengths::Needed`): the steady cost of an input.
//! - `unicorn_64_structured_lane`: as a campaign's lane runs them: every
//!   iteration the next 1,000 inputs of one lane's stream, with their
//!   escalations as they come and the lengths of findings the lane found
//!   already left unmeasured (`Lengths::Unfound`).

use analyzer::mode::{Config, Mode};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fuzzer::eval::{Evaluator, Lengths};
use fuzzer::rng::Rng;

/// Whether an input has a LOCK prefix: Unicorn 2.1 aborts the process on
/// LOCK BT, BTS, BTR and BTC with a register operand (a finding of the
/// fuzzer; a campaign's worker dies and is restarted, a benchmark would
/// not).
fn locked(b: &[u8]) -> bool {
    b.iter()
        .take_while(|x| fuzzer::gen::PREFIXES.contains(x))
        .any(|&x| x == 0xf0)
}

fn bench(c: &mut Criterion) {
    let templates = fuzzer::gen::templates(Mode::Long64);
    let evaluator = || {
        let openers = fuzzer::worker::openers(&["unicorn".to_string()]).expect("unicorn");
        Evaluator::new(openers, Mode::Long64, Config::UMIP_OFF).expect("evaluator")
    };
    let stream = |seed: u64| {
        let templates = &templates;
        (0..)
            .map(move |i| {
                fuzzer::gen::structured(&mut Rng::for_input(seed, 0, i), Mode::Long64, templates)
            })
            .filter(|b| !locked(b))
    };
    let mut g = c.benchmark_group("fuzz");
    g.throughput(Throughput::Elements(1000));
    g.sample_size(10);

    let mut ev = evaluator();
    let inputs: Vec<Vec<u8>> = stream(1).take(1000).collect();
    // The escalations of these inputs once, as a campaign caches them.
    for b in &inputs {
        let _ = ev.eval(b);
    }
    g.bench_function("unicorn_64_structured_1000", |b| {
        b.iter(|| {
            for x in &inputs {
                let _ = ev.eval(x);
            }
        })
    });

    let mut ev = evaluator();
    let mut lane = stream(3);
    g.bench_function("unicorn_64_structured_lane", |b| {
        b.iter(|| {
            for x in lane.by_ref().take(1000) {
                let _ = ev.eval_with(&x, Lengths::Unfound);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
