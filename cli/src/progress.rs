//! Progress bars for jobs (indicatif, on stderr; drawn only on a terminal): a spinner while the
//! job waits, then a step bar fed by the job's progress events.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use kontext_proto::JobStatus;

use crate::client::Progress;

/// The bar of one job.
pub struct JobBar {
    bar: ProgressBar,
    stepping: bool,
}

impl JobBar {
    /// A spinner labelled `label` (e.g. "generate"), saying "queued".
    pub fn new(label: &str) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner:.cyan} {prefix:>9.bold} {msg} {elapsed:.dim}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(label.to_owned());
        bar.set_message("submitted");
        bar.enable_steady_tick(Duration::from_millis(100));
        Self {
            bar,
            stepping: false,
        }
    }

    /// Applies one event of the job.
    pub fn update(&mut self, p: &Progress) {
        match p {
            Progress::State(JobStatus::Queued) => self.bar.set_message("queued"),
            Progress::State(JobStatus::Running) => self.bar.set_message("running"),
            Progress::State(other) => self.bar.set_message(other.to_string()),
            Progress::Step { step, total } => {
                if !self.stepping {
                    self.stepping = true;
                    self.bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner:.cyan} {prefix:>9.bold} [{bar:30.cyan/blue}] {pos}/{len} steps {elapsed:.dim}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                }
                self.bar.set_length(u64::from(*total));
                self.bar.set_position(u64::from(*step));
            }
        }
    }

    /// Ends the bar (it stays on screen with its last state).
    pub fn finish(&self, status: &str) {
        if self.stepping
            && status == "succeeded"
            && let Some(len) = self.bar.length()
        {
            self.bar.set_position(len);
        }
        self.bar.finish_with_message(status.to_owned());
    }

    /// A spinner for a task without steps (loading the model).
    pub fn task(message: &str) -> ProgressBar {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    }
}
