//! Distinct instructions evaluated per second on Unicorn, one core: the
//! fuzzer's quick look (base state at both CPLs and the oracles) over
//! structured inputs, as a campaign's worker runs them.

use analyzer::mode::{Config, Mode};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fuzzer::eval::Evaluator;
use fuzzer::rng::Rng;

fn bench(c: &mut Criterion) {
    let openers = fuzzer::worker::openers(&["unicorn".to_string()]).expect("unicorn");
    let mut ev = Evaluator::new(openers, Mode::Long64, Config::UMIP_OFF).expect("evaluator");
    let templates = ev.templates.clone();
    // Without LOCK prefixes: Unicorn 2.1 aborts the process on LOCK BT,
    // BTS, BTR and BTC with a register operand (a finding of the fuzzer;
    // a campaign's worker dies and is restarted, a benchmark would not).
    let inputs: Vec<Vec<u8>> = (0..)
        .map(|i| fuzzer::gen::structured(&mut Rng::for_input(1, 0, i), Mode::Long64, &templates))
        .filter(|b| {
            !b.iter()
                .take_while(|x| fuzzer::gen::PREFIXES.contains(x))
                .any(|&x| x == 0xf0)
        })
        .take(1000)
        .collect();
    // The escalations of these inputs once, as a campaign caches them.
    for b in &inputs {
        let _ = ev.eval(b);
    }
    let mut g = c.benchmark_group("fuzz");
    g.throughput(Throughput::Elements(inputs.len() as u64));
    g.sample_size(10);
    g.bench_function("unicorn_64_structured_1000", |b| {
        b.iter(|| {
            for x in &inputs {
                let _ = ev.eval(x);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
