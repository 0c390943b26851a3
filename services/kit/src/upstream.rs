//! The time a request spends waiting on providers, as the provider-adapter
//! measures it: from sending an upstream request to its answer's headers,
//! plus the reading of a whole (non-streamed) answer. The edge subtracts it
//! from a request's total to report the gateway's own time (the
//! `x-llmgw-overhead-ms` header), so that time spent on internal hops, in
//! translation or in queues counts as the gateway's, never as the provider's.
//!
//! The clock is task-local: [`measure`] starts one around a call and
//! [`add`] (in the adapter's HTTP layer) adds to it. A remote adapter's
//! figure crosses the gRPC hop in the [`HEADER`] response header, and the
//! edge's client adds it to its own clock.

use std::cell::Cell;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

tokio::task_local! {
    static SPENT: Cell<Option<Duration>>;
}

/// The gRPC response header carrying a remote adapter's figure, in whole
/// microseconds.
pub const HEADER: &str = "x-llmgw-upstream-us";

/// Runs `fut` with a clock of its own; returns its output and the provider
/// time recorded within it, `None` when nothing was (an adapter that does
/// not measure, such as a test double).
///
/// A plain future rather than an `async fn`: an `async` wrapper would hold
/// `fut` twice (as its argument and as the future it awaits), and every
/// level of the request's future above it would copy those bytes.
pub fn measure<F: Future>(fut: F) -> Measured<F> {
    Measured { fut, spent: None }
}

pin_project_lite::pin_project! {
    /// The future of [`measure`].
    pub struct Measured<F> {
        #[pin]
        fut: F,
        spent: Option<Duration>,
    }
}

impl<F: Future> Future for Measured<F> {
    type Output = (F::Output, Option<Duration>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let spent = this.spent;
        let fut = this.fut;
        // The clock is this task's only while `fut` is polled, so clocks of
        // nested or interleaved calls never mix.
        let polled = SPENT.sync_scope(Cell::new(*spent), || {
            let polled = fut.poll(cx);
            *spent = SPENT.with(Cell::get);
            polled
        });
        polled.map(|out| (out, *spent))
    }
}

/// Adds `spent` to the clock of the calling task, if it has one.
pub fn add(spent: Duration) {
    let _ = SPENT.try_with(|c| c.set(Some(c.get().unwrap_or_default() + spent)));
}

/// The figure as [`HEADER`]'s value.
pub fn to_header(spent: Duration) -> u64 {
    u64::try_from(spent.as_micros()).unwrap_or(u64::MAX)
}

/// [`HEADER`]'s value read back; `None` unless it is a whole number.
pub fn from_header(value: &[u8]) -> Option<Duration> {
    std::str::from_utf8(value)
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn measures_only_what_is_added_within() {
        add(Duration::from_millis(5)); // no clock here: ignored
        let ((), spent) = measure(async {}).await;
        assert_eq!(spent, None);
        let ((), spent) = measure(async {
            add(Duration::from_micros(250));
            tokio::task::yield_now().await;
            add(Duration::from_micros(750));
        })
        .await;
        assert_eq!(spent, Some(Duration::from_millis(1)));
    }

    #[tokio::test]
    async fn clocks_nest_without_sharing() {
        let (((), inner), outer) = measure(async {
            let inner = measure(async { add(Duration::from_millis(2)) }).await;
            add(Duration::from_millis(1));
            inner
        })
        .await;
        assert_eq!(inner, Some(Duration::from_millis(2)));
        assert_eq!(outer, Some(Duration::from_millis(1)));
    }

    #[test]
    fn header_round_trips() {
        let d = Duration::from_micros(1234);
        assert_eq!(from_header(to_header(d).to_string().as_bytes()), Some(d));
        assert_eq!(from_header(b"-1"), None);
        assert_eq!(from_header(b"1.5"), None);
    }
}
