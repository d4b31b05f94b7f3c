//! tidegate: a progressive-delivery proxy and rollout controller.
#![forbid(unsafe_code)]

pub mod admin;
pub mod analysis;
pub mod cli;
pub mod clock;
pub mod config;
pub mod controller;
pub mod demo;
pub mod health;
pub mod httpclient;
pub mod kube;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod proxy_config;
pub mod reload;
pub mod rollout;
pub mod routing;
pub mod runtime;
pub mod store;
pub mod units;
