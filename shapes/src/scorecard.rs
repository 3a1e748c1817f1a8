//! Totals of the judge's verdicts per task, and the table `kontext eval` prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::judge::Verdict;
use crate::tasks::Task;

/// Sums over the verdicts of one task.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskScore {
    pub cases: usize,
    pub objects_correct: usize,
    pub objects_total: usize,
    pub colour_correct: usize,
    pub shape_correct: usize,
    pub background_correct: usize,
    pub edits_correct: usize,
    pub spurious: usize,
    mask_iou_sum: f64,
    psnr_target_sum: f64,
    psnr_preserved_sum: f64,
    psnr_preserved_cases: usize,
}

fn ratio(n: usize, d: usize) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

impl TaskScore {
    pub fn add(&mut self, v: &Verdict) {
        self.cases += 1;
        self.objects_correct += v.objects_correct;
        self.objects_total += v.objects_total;
        self.colour_correct += v.colour_correct;
        self.shape_correct += v.shape_correct;
        self.background_correct += usize::from(v.background_correct);
        self.edits_correct += usize::from(v.edit_correct);
        self.spurious += v.spurious;
        self.mask_iou_sum += f64::from(v.mask_iou);
        self.psnr_target_sum += v.psnr_target;
        if let Some(p) = v.psnr_preserved {
            self.psnr_preserved_sum += p;
            self.psnr_preserved_cases += 1;
        }
    }

    /// Target objects with the right shape, colour and size.
    pub fn object_accuracy(&self) -> f64 {
        ratio(self.objects_correct, self.objects_total)
    }

    pub fn colour_accuracy(&self) -> f64 {
        ratio(self.colour_correct, self.objects_total)
    }

    pub fn shape_accuracy(&self) -> f64 {
        ratio(self.shape_correct, self.objects_total)
    }

    /// Cases whose edited cells (or background) are exactly the target's; for text-to-image,
    /// the whole scene.
    pub fn edit_accuracy(&self) -> f64 {
        ratio(self.edits_correct, self.cases)
    }

    pub fn mask_iou(&self) -> f64 {
        if self.cases == 0 {
            0.0
        } else {
            self.mask_iou_sum / self.cases as f64
        }
    }

    /// Mean PSNR against the exactly rendered target, dB.
    pub fn psnr_target(&self) -> f64 {
        if self.cases == 0 {
            0.0
        } else {
            self.psnr_target_sum / self.cases as f64
        }
    }

    /// Mean PSNR against the input outside the edited region, dB (edits only).
    pub fn psnr_preserved(&self) -> Option<f64> {
        (self.psnr_preserved_cases > 0)
            .then(|| self.psnr_preserved_sum / self.psnr_preserved_cases as f64)
    }
}

/// Scores by task, in `Task::ALL` order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scorecard {
    pub tasks: BTreeMap<Task, TaskScore>,
}

impl Scorecard {
    pub fn add(&mut self, v: &Verdict) {
        self.tasks.entry(v.task).or_default().add(v);
    }

    /// One row per task: cases, object / colour / shape accuracy, scene-or-edit accuracy, mask
    /// IoU, PSNR against the target, PSNR of the preserved region.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<14} {:>5} {:>8} {:>7} {:>7} {:>8} {:>6} {:>11} {:>11}",
            "task",
            "cases",
            "objects",
            "colour",
            "shape",
            "edit ok",
            "IoU",
            "PSNR target",
            "PSNR kept"
        );
        for (task, s) in &self.tasks {
            let kept = s
                .psnr_preserved()
                .map_or_else(|| "-".to_string(), |p| format!("{p:.1} dB"));
            let _ = writeln!(
                out,
                "{:<14} {:>5} {:>7.1}% {:>6.1}% {:>6.1}% {:>7.1}% {:>6.3} {:>8.1} dB {:>11}",
                task.name(),
                s.cases,
                100.0 * s.object_accuracy(),
                100.0 * s.colour_accuracy(),
                100.0 * s.shape_accuracy(),
                100.0 * s.edit_accuracy(),
                s.mask_iou(),
                s.psnr_target(),
                kept
            );
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::judge::judge;
    use crate::render::render;
    use crate::tasks::{Split, case};

    #[test]
    fn exact_answers_score_full_marks_and_inputs_score_none() {
        let mut exact = Scorecard::default();
        let mut unchanged = Scorecard::default();
        for task in Task::ALL {
            for i in 0..10 {
                let c = case(5, Split::HeldOut, task, i);
                let input = c.input.as_ref().map(|s| render(s, 96, 96));
                exact.add(&judge(&c, &render(&c.target, 96, 96), input.as_ref()));
                if let Some(img) = &input {
                    unchanged.add(&judge(&c, img, Some(img)));
                }
            }
        }
        for s in exact.tasks.values() {
            assert_eq!(s.object_accuracy(), 1.0);
            assert_eq!(s.edit_accuracy(), 1.0);
        }
        for s in unchanged.tasks.values() {
            assert_eq!(s.edit_accuracy(), 0.0);
        }
        let table = exact.table();
        assert!(table.contains("text-to-image"), "{table}");
        assert!(table.contains("100.0%"), "{table}");
    }
}
