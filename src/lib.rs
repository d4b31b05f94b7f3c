//! tidegate: a progressive-delivery proxy and rollout controller.
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod health;
pub mod metrics;
pub mod routing;
