//! popek's fuzzer: it looks beyond the catalog (what iced-x86 documents)
//! and checks the engines against each other and against the decoder.
//! Bytes become tests through the probe layer (`explain::raw_entry` →
//! `Prober` → `classify`); the fuzzer adds no engine or observation code.
//!
//! - [`gen`]: the generators (structured, tunnel, mutate) and [`rng`];
//! - [`eval`]: one input on every engine and the oracles (decoder vs
//!   engine, engine vs engine, P&G, engine failure);
//! - [`worker`]: the child process that runs inputs, so a crash or hang
//!   takes only it, as a [`forkserver`] that forks a new child after a
//!   death; [`campaign`]: lanes, restarts, minimization, shards;
//! - [`finding`]: findings, their deduplication, `findings.jsonl` and the
//!   corpus files; [`planted`]: the test engine of the fuzzer's own tests.

pub mod campaign;
pub mod eval;
pub mod finding;
pub mod forkserver;
pub mod gen;
pub mod planted;
pub mod rng;
pub mod worker;
