//! LoRA affinity in the embedded queue, mirroring prelude.lua's `lora_holder`, `offer_to_worker`
//! and `record_lora_set` (docs/queue-protocol.md §LoRA affinity): a job whose LoRA set a worker's
//! engine holds is offered to that worker first and to everyone after the affinity delay.

use std::collections::HashMap;

use super::{Entry, State};
use crate::job::{JobId, Millis};
use crate::policy;

/// Seconds a recorded owner or held set lives (prelude.lua `LORA_OWNER_TTL_S`).
const LORA_OWNER_TTL_MS: Millis = 900_000;

/// The two expiring maps of the Redis keys `lora:<set>` and `w:<worker>:lora`.
#[derive(Debug, Default)]
pub(super) struct LoraAffinity {
    /// set → (worker that last completed a job with it, expiry).
    owner: HashMap<String, (String, Millis)>,
    /// worker → (set its engine holds, expiry).
    held: HashMap<String, (String, Millis)>,
}

impl State {
    /// The worker to offer a job with LoRA set `set` first: the set's last owner, if its engine
    /// still holds that set.
    pub(super) fn lora_holder(&self, set: Option<&str>, now: Millis) -> Option<String> {
        let set = set?;
        let (worker, until) = self.lora.owner.get(set)?;
        let (held, held_until) = self.lora.held.get(worker)?;
        (*until > now && *held_until > now && held == set).then(|| worker.clone())
    }

    /// Offer `jid` on `worker`'s affinity queue and, from now + `delay`, to everyone (the job's
    /// entry is the offer; a later dispatch supersedes it).
    pub(super) fn offer_to_worker(
        &mut self,
        jid: JobId,
        worker: String,
        now: Millis,
        delay: std::time::Duration,
    ) {
        let at = now.saturating_add(policy::millis(delay));
        self.next_seq += 1;
        let seq = self.next_seq;
        let Some(job) = self.jobs.get_mut(&jid) else {
            return;
        };
        job.entry = Some(seq);
        job.delayed_until = Some(at);
        self.delay.insert((at, jid));
        self.affinity.entry(worker).or_default().push_back(Entry {
            seq,
            job: jid,
            at: now,
        });
    }

    /// After `worker` committed a job with LoRA set `set` (`None`: none), or failed one (`None`:
    /// its engine's set is unknown), record what its engine holds.
    pub(super) fn record_lora_set(&mut self, worker: Option<&str>, set: Option<&str>, now: Millis) {
        let Some(worker) = worker else { return };
        match set {
            Some(set) => {
                let until = now.saturating_add(LORA_OWNER_TTL_MS);
                self.lora
                    .owner
                    .insert(set.to_owned(), (worker.to_owned(), until));
                self.lora
                    .held
                    .insert(worker.to_owned(), (set.to_owned(), until));
            }
            None => {
                self.lora.held.remove(worker);
            }
        }
    }
}
