//! Executions per second of the engines: one run of one instruction (restore
//! the context, write the harness pages, run to the sentinel, capture the
//! state), and one catalog entry over its whole sampled-state matrix.

use analyzer::engine::{self, EngineKind};
use analyzer::machine::{GuestImage, Setup, Variant};
use analyzer::observe::Side;
use analyzer::{Config, Mode};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn one_run(c: &mut Criterion) {
    let mut g = c.benchmark_group("unicorn_run");
    g.throughput(Throughput::Elements(1));
    let cfg = Config::UMIP_OFF;
    for (mode, name, bytes) in [
        (Mode::Long64, "nop_64_cpl3", &[0x90u8][..]),
        (Mode::Long64, "hlt_64_cpl3_trap", &[0xF4][..]),
        (
            Mode::Prot32,
            "sgdt_32_cpl3",
            &[0x0F, 0x01, 0x05, 0x00, 0x81, 0, 0][..],
        ),
    ] {
        let Ok(mut e) = engine::open(EngineKind::Unicorn) else {
            return;
        };
        let img = GuestImage::build(mode, cfg, Variant::base(&cfg));
        let Some(p) = img.prepare(Side::User, bytes, &Setup::default()) else {
            return;
        };
        g.bench_function(name, |b| b.iter(|| black_box(e.run(&img, Side::User, &p))));
    }
    g.finish();
}

fn one_matrix(c: &mut Criterion) {
    let mut g = c.benchmark_group("unicorn_matrix");
    let cfg = Config::UMIP_OFF;
    let mode = Mode::Prot32;
    let images: Vec<GuestImage> = Variant::matrix(mode, &cfg)
        .into_iter()
        .map(|v| GuestImage::build(mode, cfg, v))
        .collect();
    let runs = images.len() as u64 * 2;
    g.throughput(Throughput::Elements(runs));
    let Ok(mut e) = engine::open(EngineKind::Unicorn) else {
        return;
    };
    let bytes = [0x9C]; // pushfd
    g.bench_function("pushfd_32_all_variants_both_sides", |b| {
        b.iter(|| {
            for img in &images {
                for side in Side::BOTH {
                    if let Some(p) = img.prepare(side, &bytes, &Setup::default()) {
                        black_box(e.run(img, side, &p));
                    }
                }
            }
        })
    });
    g.finish();
}

fn kvm_run(c: &mut Criterion) {
    if let Err(reason) = engine::availability(EngineKind::Kvm) {
        println!("skipped: kvm_run: {reason}");
        return;
    }
    let mut g = c.benchmark_group("kvm_run");
    g.throughput(Throughput::Elements(1));
    let cfg = Config::UMIP_OFF;
    let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
    for (name, side, bytes) in [
        ("nop_64_cpl0", Side::Supervisor, &[0x90u8][..]),
        ("nop_64_cpl3", Side::User, &[0x90][..]),
        ("hlt_64_cpl3_trap", Side::User, &[0xF4][..]),
    ] {
        let Ok(mut e) = engine::open(EngineKind::Kvm) else {
            return;
        };
        let Some(p) = img.prepare(side, bytes, &Setup::default()) else {
            return;
        };
        g.bench_function(name, |b| b.iter(|| black_box(e.run(&img, side, &p))));
    }
    g.finish();
    // A scan alternates the CPLs: one run at CPL 0 and one at CPL 3 per
    // iteration (two runs).
    let mut g = c.benchmark_group("kvm_mix");
    g.throughput(Throughput::Elements(2));
    let Ok(mut e) = engine::open(EngineKind::Kvm) else {
        return;
    };
    let tests: Vec<_> = Side::BOTH
        .into_iter()
        .filter_map(|side| {
            Some((
                side,
                img.prepare(side, &[0x48, 0x01, 0xC8], &Setup::default())?,
            ))
        })
        .collect();
    g.bench_function("add_64_cpl0_then_cpl3", |b| {
        b.iter(|| {
            for (side, p) in &tests {
                black_box(e.run(&img, *side, p));
            }
        })
    });
    g.finish();
}

/// The native engine: the host CPU at CPL 3 in its worker process (64-bit
/// base state in the host's own UMIP configuration).
fn native_run(c: &mut Criterion) {
    let mut e = match engine::open(EngineKind::Native) {
        Ok(e) => e,
        Err(reason) => {
            println!("skipped: native_run: {reason}");
            return;
        }
    };
    let mut g = c.benchmark_group("native_run");
    g.throughput(Throughput::Elements(1));
    let umip = std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.split_whitespace().any(|f| f == "umip"))
        .unwrap_or(false);
    let cfg = if umip {
        Config::UMIP_ON
    } else {
        Config::UMIP_OFF
    };
    let img = GuestImage::build(Mode::Long64, cfg, Variant::base(&cfg));
    for (name, bytes) in [
        ("nop_64_cpl3", &[0x90u8][..]),
        ("add_64_cpl3", &[0x48, 0x01, 0xC8][..]),
        ("ud2_64_cpl3_trap", &[0x0F, 0x0B][..]),
    ] {
        let Some(p) = img.prepare(Side::User, bytes, &Setup::default()) else {
            return;
        };
        g.bench_function(name, |b| b.iter(|| black_box(e.run(&img, Side::User, &p))));
    }
    // Distinct instructions: every 64-bit catalog entry once, each laid out
    // (prepared) and run at CPL 3, as a fuzz worker tries input after input.
    let entries = analyzer::catalog::build(Mode::Long64).entries;
    g.throughput(Throughput::Elements(entries.len() as u64));
    g.sample_size(10);
    g.bench_function("catalog_64_cpl3_distinct", |b| {
        b.iter(|| {
            for x in &entries {
                if let Some(p) = img.prepare(Side::User, &x.bytes, &x.setup) {
                    black_box(e.run(&img, Side::User, &p));
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, one_run, one_matrix, kvm_run, native_run);
criterion_main!(benches);
