//! Canary analysis: metric specs, conditions, providers, and the Pass / Fail / Inconclusive verdict.

pub mod builtin;
pub mod condition;
pub mod spec;
pub mod verdict;

pub use condition::Condition;
pub use spec::{AnalysisSpec, BackgroundAnalysis, MetricSpec, ProviderSpec};
pub use verdict::{Measurement, MetricTally, Outcome, Reading, Verdict, judge};
