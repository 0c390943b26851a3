//! Tells the router how each try went, exactly once per try, whatever
//! happens to the request: a [`Try`] that is dropped unresolved (the client
//! left before the provider answered) reports itself abandoned, and the
//! [`Release`] a successful try turns into reports the end of its stream when
//! dropped — so the router's in-flight counts never leak.

use llmgw_kit::services::Router;
use llmgw_proto as pb;
use pb::attempt_report::Event;

/// Which target a report is about.
struct Subject {
    router: Router,
    provider: String,
    model: String,
    key: u32,
}

impl Subject {
    fn send(&self, event: Event, latency_ms: f64) {
        self.router.report(pb::AttemptReport {
            provider: self.provider.clone(),
            model: self.model.clone(),
            key: self.key,
            event: event as i32,
            latency_ms,
        });
    }
}

/// One try of one target, until the provider answered or failed.
pub struct Try(Option<Subject>);

impl Try {
    /// `started`: report the start (the router counts a plan's first try
    /// itself, when it routes).
    pub fn begin(router: &Router, target: &pb::Target, started: bool) -> Self {
        let subject = Subject {
            router: router.clone(),
            provider: target.provider.clone(),
            model: target.model.clone(),
            key: target.key,
        };
        if started {
            subject.send(Event::Started, 0.0);
        }
        Self(Some(subject))
    }

    /// The provider answered: its first byte, or the whole response.
    pub fn succeeded(mut self, latency_ms: f64) -> Release {
        let subject = self.0.take();
        if let Some(s) = &subject {
            s.send(Event::Succeeded, latency_ms);
        }
        Release(subject)
    }

    /// The try failed; `provider_fault`: a retryable, provider-side failure
    /// (counts toward ejection), else the try is only over.
    pub fn failed(mut self, latency_ms: f64, provider_fault: bool) {
        if let Some(s) = self.0.take() {
            let event = if provider_fault {
                Event::Failed
            } else {
                Event::Abandoned
            };
            s.send(event, latency_ms);
        }
    }
}

impl Drop for Try {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.send(Event::Abandoned, 0.0);
        }
    }
}

/// A successful try still in flight (a stream being passed on); dropping it
/// reports the try finished.
pub struct Release(Option<Subject>);

impl Release {
    /// The stream broke after it started: a provider-side failure.
    pub fn failed(mut self) {
        if let Some(s) = self.0.take() {
            s.send(Event::Failed, 0.0);
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.send(Event::Finished, 0.0);
        }
    }
}
