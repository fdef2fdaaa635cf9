//! Byte progress of a step (hashing, downloading, copying an image) as
//! [`Event::StepProgress`] events, so the longest work of an apply reaches
//! the user through the same stream as everything else.

use super::{Event, Events};
use crate::progress::Progress;
use std::sync::Mutex;

/// A [`Progress`] that forwards to the apply's [`Events`], tagged with the
/// step's host and address.
pub struct StepBytes<'a> {
    events: &'a dyn Events,
    host: &'a str,
    address: &'a str,
    state: Mutex<Task>,
}

#[derive(Default)]
struct Task {
    label: String,
    done: u64,
    total: Option<u64>,
}

impl<'a> StepBytes<'a> {
    /// Progress of the step at `address` on `host`.
    pub fn new(events: &'a dyn Events, host: &'a str, address: &'a str) -> Self {
        StepBytes {
            events,
            host,
            address,
            state: Mutex::new(Task::default()),
        }
    }

    fn emit(&self, task: &Task) {
        self.events.event(Event::StepProgress {
            host: self.host.into(),
            address: self.address.into(),
            label: task.label.clone(),
            done: task.done,
            total: task.total,
        });
    }
}

impl Progress for StepBytes<'_> {
    fn start(&self, label: &str, total: Option<u64>) {
        let mut task = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *task = Task {
            label: label.into(),
            done: 0,
            total,
        };
        self.emit(&task);
    }

    fn advance(&self, bytes: u64) {
        let mut task = self.state.lock().unwrap_or_else(|e| e.into_inner());
        task.done += bytes;
        self.emit(&task);
    }

    // The step's own StepFinished event closes the display.
    fn finish(&self, _outcome: &str) {}
}
