//! popek's library: the machine model and harness builders, the instruction
//! catalog, the engines, the classifier and the reports.

pub mod catalog;
pub mod check;
pub mod classify;
pub mod compare;
pub mod deviation;
pub mod engine;
pub mod explain;
pub mod fasthash;
pub mod host;
pub mod input;
pub mod length;
pub mod machine;
pub mod mode;
pub mod observe;
pub mod opmap;
pub mod page;
pub mod probe;
pub mod record;
pub mod report;
pub mod scan;
pub mod truth;
pub mod vectors;
pub mod violators;

pub use mode::{Config, Mode};
