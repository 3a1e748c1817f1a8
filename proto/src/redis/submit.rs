//! Submitting a job on `RedisQueue` (`lua/submit.lua`), optionally followed by `WAIT` for
//! replicas on the same dedicated connection.

use redis::ScriptInvocation;
use redis::Value;

use super::RedisQueue;
use super::chains::retained_refusal;
use super::reply::{RedisFailure, at, backend, int, job_id, tagged};
use super::scripts::SCRIPTS;
use crate::error::QueueError;
use crate::job::{JobId, Millis};
use crate::keys::{list_member, list_member_cutoff};
use crate::policy;
use crate::queue::{Submission, SubmitOutcome};

impl RedisQueue {
    pub(super) async fn submit_impl(
        &self,
        sub: Submission,
        now: Millis,
    ) -> Result<SubmitOutcome, QueueError> {
        let k = &self.keys;
        let id = JobId::new();
        let spec =
            serde_json::to_string(&sub.spec).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let chain = match &sub.chain {
            Some(c) => serde_json::to_string(c).map_err(|e| QueueError::Corrupt(e.to_string()))?,
            None => String::new(),
        };
        let (idem_key, idem_ttl) = match &sub.idempotency_key {
            Some(key) => (
                k.idempotency(&sub.tenant, key),
                self.cfg.queue.idempotency_ttl.as_secs().max(1),
            ),
            None => (k.job(id), 0),
        };
        let mut inv = SCRIPTS.submit.prepare_invoke();
        inv.key(k.job(id))
            .key(k.class_stream(sub.spec.priority))
            .key(idem_key)
            .key(k.tenant_jobs(&sub.tenant))
            .key(k.tenant_inflight(&sub.tenant))
            .key(k.events(id))
            .key(k.all_jobs())
            .arg(k.prefix())
            .arg(id.to_string())
            .arg(&sub.tenant)
            .arg(spec)
            .arg(&sub.body_hash)
            .arg(now)
            .arg(idem_ttl)
            .arg(sub.max_in_flight)
            .arg(sub.spec.priority.class())
            .arg(chain)
            .arg(list_member(now, id))
            .arg(list_member_cutoff(self.cutoff(now)))
            .arg(self.maxlen())
            .arg(sub.retained.jobs)
            .arg(crate::loras::lora_set_id(&sub.spec.loras).unwrap_or_default())
            .arg(policy::millis(self.cfg.queue.lora_affinity_delay));
        let reply = if self.cfg.wait_replicas == 0 {
            self.run(&inv).await?
        } else {
            self.run_replicated(&inv, id).await?
        };
        let (tag, rest) = tagged(&reply)?;
        match tag.as_str() {
            "created" => Ok(SubmitOutcome {
                id: job_id(at(rest, 0)?)?,
                created: true,
            }),
            "replay" => Ok(SubmitOutcome {
                id: job_id(at(rest, 0)?)?,
                created: false,
            }),
            "conflict" => Err(QueueError::IdempotencyConflict),
            "too_many" => Err(QueueError::TooManyInFlight {
                in_flight: u64::try_from(int(at(rest, 0)?)?).unwrap_or(0),
                limit: sub.max_in_flight,
            }),
            "too_many_retained" => Err(retained_refusal(rest, &sub.retained)?),
            other => Err(QueueError::Corrupt(format!("submit replied {other:?}"))),
        }
    }

    /// Run a submit and then `WAIT` for replicas, on one dedicated connection: WAIT covers only
    /// the writes of its own connection.
    async fn run_replicated(
        &self,
        inv: &ScriptInvocation<'_>,
        id: JobId,
    ) -> Result<Value, QueueError> {
        let wanted = self.cfg.wait_replicas;
        let mut con = self.blocking.take().await?;
        let bound = 2 * self.cfg.command_timeout + self.cfg.wait_timeout;
        let both = async {
            let reply: Value = inv.invoke_async(&mut con.con).await?;
            let acked: i64 = redis::cmd("WAIT")
                .arg(wanted)
                .arg(policy::millis(self.cfg.wait_timeout).max(1))
                .query_async(&mut con.con)
                .await?;
            Ok::<_, redis::RedisError>((reply, acked))
        };
        let (reply, acked) = match tokio::time::timeout(bound, both).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(backend(e)),
            Err(_) => {
                return Err(RedisFailure::NoReply {
                    what: "submit + WAIT",
                    after: bound,
                }
                .into());
            }
        };
        self.blocking.put(con);
        if acked < i64::from(wanted) {
            tracing::warn!(job_id = %id, acked, wanted, "submit reached fewer replicas than configured");
        }
        Ok(reply)
    }
}
