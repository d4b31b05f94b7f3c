//! Where routes come from: the config file today, the cluster next. A source hands each new
//! set of validated routes to the one publisher and writes no table itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a source runs as: until the process stops.
pub type SourceFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Feeds the publisher (`TablePublisher::replace_config`) every new set of routes it learns of.
pub trait RouteSource: Send + Sync + 'static {
    /// Watches for new routes until the process stops.
    fn watch(self: Arc<Self>) -> SourceFuture;
}
