//! Rollouts: the spec, the status record, and the pure engine that moves one from the other.

pub mod engine;
pub mod spec;
pub mod status;

pub use engine::{
    Command, CommandError, Decision, Effect, MeasureRequest, MeasurementResult, Observations,
    command, decide,
};
pub use spec::{RolloutSpec, Step};
pub use status::{Event, EventKind, Phase, RolloutStatus};
