//! Test doubles for [`TrafficProvider`]: a recording provider that can fail on demand.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{TrafficError, TrafficProvider};
use crate::model::Weight;

/// What the next `set_weight` call does.
#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    /// Apply the weight.
    Ok,
    /// Fail with a transient error.
    Transient,
    /// Fail with a permanent error.
    Permanent,
    /// Accept the call but leave the old weight in force (read-back mismatch).
    Ignore,
    /// Take this long, then apply.
    Slow(Duration),
    /// Apply, then someone else puts this weight in force before the read-back (a human's
    /// change landing right after coalmine's).
    Overridden(Weight),
}

type Hook = Arc<dyn Fn(Weight) + Send + Sync>;

#[derive(Default)]
struct Inner {
    weight: Weight,
    calls: Vec<Weight>,
    script: VecDeque<Behaviour>,
    always: Option<Behaviour>,
    hook: Option<Hook>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("weight", &self.weight)
            .field("calls", &self.calls)
            .field("script", &self.script)
            .finish_non_exhaustive()
    }
}

/// A provider that records every `set_weight` and follows a script of behaviours.
#[derive(Clone, Debug, Default)]
pub struct MockTrafficProvider {
    inner: Arc<Mutex<Inner>>,
}

impl MockTrafficProvider {
    /// A provider with all traffic on the baseline that applies every call.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues behaviours for the next calls (then back to `Ok`, or the `always` behaviour).
    pub fn script(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.lock().script.extend(behaviours);
    }

    /// Every call behaves like this once the script is used up.
    pub fn always(&self, b: Behaviour) {
        self.lock().always = Some(b);
    }

    /// Runs `f(weight)` at the start of every `set_weight` call.
    pub fn on_set(&self, f: impl Fn(Weight) + Send + Sync + 'static) {
        self.lock().hook = Some(Arc::new(f));
    }

    /// Weights requested so far, in order.
    #[must_use]
    pub fn calls(&self) -> Vec<Weight> {
        self.lock().calls.clone()
    }

    /// The weight in force.
    #[must_use]
    pub fn weight(&self) -> Weight {
        self.lock().weight
    }

    /// Puts `w` in force from outside (a human, another controller): not recorded as a call.
    pub fn force(&self, w: Weight) {
        self.lock().weight = w;
    }
}

impl TrafficProvider for MockTrafficProvider {
    fn name(&self) -> &'static str {
        "mock"
    }

    async fn current(&self) -> Result<Weight, TrafficError> {
        Ok(self.lock().weight)
    }

    async fn set_weight(&self, weight: Weight) -> Result<(), TrafficError> {
        let (behaviour, hook) = {
            let mut g = self.lock();
            g.calls.push(weight);
            let b = g
                .script
                .pop_front()
                .or_else(|| g.always.clone())
                .unwrap_or(Behaviour::Ok);
            (b, g.hook.clone())
        };
        if let Some(h) = hook {
            h(weight);
        }
        match behaviour {
            Behaviour::Ok => {
                self.lock().weight = weight;
                Ok(())
            }
            Behaviour::Slow(d) => {
                tokio::time::sleep(d).await;
                self.lock().weight = weight;
                Ok(())
            }
            Behaviour::Ignore => Ok(()),
            Behaviour::Overridden(w) => {
                self.lock().weight = w;
                Ok(())
            }
            Behaviour::Transient => Err(TrafficError::Unavailable {
                provider: "mock",
                message: format!("scripted transient failure setting {weight}"),
            }),
            Behaviour::Permanent => Err(TrafficError::Rejected {
                provider: "mock",
                message: format!("scripted permanent failure setting {weight}"),
            }),
        }
    }
}
