//! The Unicorn engine. (being written)
use super::{Engine, EngineError};
use crate::machine::{GuestImage, Prepared};
use crate::observe::{Observation, Side};

pub struct UnicornEngine;
impl UnicornEngine {
    pub fn new() -> Result<Self, EngineError> {
        Ok(UnicornEngine)
    }
}
impl Engine for UnicornEngine {
    fn name(&self) -> &'static str {
        "unicorn"
    }
    fn version(&self) -> String {
        "unicorn 2.1.5".into()
    }
    fn run(&mut self, _image: &GuestImage, _side: Side, _test: &Prepared) -> Observation {
        unimplemented!("being written")
    }
}
