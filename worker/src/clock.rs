//! The one wall clock the worker reads: every queue call takes `now` from here, so the queue's
//! policy code never reads a clock itself.

use std::time::{SystemTime, UNIX_EPOCH};

use kontext_proto::Millis;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, kontext_proto::policy::millis)
}
