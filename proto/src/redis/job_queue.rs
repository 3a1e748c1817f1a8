//! `RedisQueue`'s `JobQueue` implementation: the transitions of the job lifecycle (claim,
//! complete, fail, release, reap) here, one script call each; the rest forwards to the parent
//! module and its siblings (`submit`, `chains`, `notify`, `reads`, `workers`).

use super::*;

impl JobQueue for RedisQueue {
    async fn submit(&self, sub: Submission, now: Millis) -> Result<SubmitOutcome, QueueError> {
        self.submit_impl(sub, now).await
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        self.read_job(id).await
    }

    async fn list(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, QueueError> {
        self.list_jobs(tenant, cursor, limit).await
    }

    async fn cancel(&self, id: JobId, now: Millis) -> Result<CancelOutcome, QueueError> {
        let mut inv = SCRIPTS.cancel.prepare_invoke();
        inv.key(self.keys.job(id))
            .key(self.keys.delay())
            .arg(self.keys.prefix())
            .arg(id.to_string())
            .arg(now)
            .arg(self.retention_s())
            .arg(self.maxlen());
        let reply = self.run(&inv).await?;
        match tagged(&reply)?.0.as_str() {
            "canceled" => Ok(CancelOutcome::Canceled),
            "requested" => Ok(CancelOutcome::CancellationRequested),
            "already" => Ok(CancelOutcome::AlreadyCompleted),
            "not_found" => Ok(CancelOutcome::NotFound),
            other => Err(QueueError::Corrupt(format!("cancel replied {other:?}"))),
        }
    }

    async fn claim(
        &self,
        worker: &str,
        lease_ttl: Duration,
        now: Millis,
        wait: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        let started = Instant::now();
        loop {
            let waited = policy::millis(started.elapsed());
            match self.claim_once(worker, lease_ttl, now + waited).await? {
                ClaimStep::Claimed(c) => return Ok(Some(*c)),
                ClaimStep::Busy => {}
                ClaimStep::Empty(last) => {
                    let remaining = wait.saturating_sub(started.elapsed());
                    if remaining.is_zero() {
                        return Ok(None);
                    }
                    // Then claim again: on news, or for one last look when the wait ran out.
                    self.wait_for_dispatch(worker, &last, remaining).await?;
                }
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %lease.job_id, epoch = lease.epoch))]
    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_ttl: Duration,
        now: Millis,
    ) -> Result<LeaseState, QueueError> {
        self.renew(lease, lease_ttl, now, None).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %lease.job_id, epoch = lease.epoch))]
    async fn progress(
        &self,
        lease: &Lease,
        step: u32,
        total: u32,
        lease_ttl: Duration,
        now: Millis,
    ) -> Result<LeaseState, QueueError> {
        self.renew(lease, lease_ttl, now, Some((step, total))).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %lease.job_id, epoch = lease.epoch))]
    async fn complete(
        &self,
        lease: &Lease,
        result: JobResult,
        now: Millis,
    ) -> Result<CompleteOutcome, QueueError> {
        let k = &self.keys;
        let engine_ms = result.engine_ms;
        let result =
            serde_json::to_string(&result).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let mut inv = SCRIPTS.complete.prepare_invoke();
        inv.key(k.job(lease.job_id))
            .key(k.leases())
            .key(k.events(lease.job_id))
            .arg(k.prefix())
            .arg(lease.job_id.to_string())
            .arg(lease.epoch)
            .arg(result)
            .arg(now)
            .arg(WORKER_GROUP)
            .arg(self.retention_s())
            .arg(self.maxlen())
            .arg(policy::millis(self.cfg.queue.affinity_delay))
            .arg(crate::usage::day_of(now))
            .arg(engine_ms);
        let reply = self.run(&inv).await?;
        match tagged(&reply)?.0.as_str() {
            "committed" => Ok(CompleteOutcome::Committed),
            "already" => Ok(CompleteOutcome::AlreadyDone),
            other => Err(Self::lease_error(other, lease)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %lease.job_id, epoch = lease.epoch))]
    async fn fail(
        &self,
        lease: &Lease,
        error: JobError,
        now: Millis,
    ) -> Result<FailOutcome, QueueError> {
        let k = &self.keys;
        let decision = policy::retry_decision(
            &self.cfg.queue.retry,
            lease.attempt,
            error.kind,
            now,
            self.jitter.fraction(),
        );
        let (decision, retry_at) = match decision {
            RetryDecision::Retry { at } => ("retry", at),
            RetryDecision::GiveUp { status } => (status.as_str(), 0),
        };
        let error =
            serde_json::to_string(&error).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let mut inv = SCRIPTS.fail.prepare_invoke();
        inv.key(k.job(lease.job_id))
            .key(k.leases())
            .key(k.delay())
            .key(k.events(lease.job_id))
            .arg(k.prefix())
            .arg(lease.job_id.to_string())
            .arg(lease.epoch)
            .arg(decision)
            .arg(retry_at)
            .arg(error)
            .arg(now)
            .arg(WORKER_GROUP)
            .arg(self.retention_s())
            .arg(self.maxlen());
        let reply = self.run(&inv).await?;
        let (tag, rest) = tagged(&reply)?;
        match tag.as_str() {
            "retry" => Ok(FailOutcome::Retrying {
                at: u64::try_from(int(at(rest, 0)?)?).unwrap_or(0),
            }),
            "finished" => {
                let state = text(at(rest, 0)?)?;
                let status: JobStatus = state
                    .parse()
                    .map_err(|_| QueueError::Corrupt(format!("fail ended in {state:?}")))?;
                Ok(FailOutcome::Finished(status))
            }
            other => Err(Self::lease_error(other, lease)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job_id = %lease.job_id, epoch = lease.epoch))]
    async fn release(&self, lease: &Lease, now: Millis) -> Result<(), QueueError> {
        let mut inv = SCRIPTS.release.prepare_invoke();
        inv.key(self.keys.job(lease.job_id))
            .arg(self.keys.prefix())
            .arg(lease.job_id.to_string())
            .arg(lease.epoch)
            .arg(now)
            .arg(WORKER_GROUP)
            .arg(self.retention_s())
            .arg(self.maxlen());
        let reply = self.run(&inv).await?;
        match tagged(&reply)?.0.as_str() {
            "released" | "canceled" => Ok(()),
            other => Err(Self::lease_error(other, lease)),
        }
    }

    async fn reap(&self, now: Millis) -> Result<ReapReport, QueueError> {
        let k = &self.keys;
        let batch = self.cfg.queue.reap_batch.max(1);
        let mut report = ReapReport::default();
        let ids = |v: &Value| -> Result<Vec<JobId>, QueueError> {
            array(v)?.iter().map(job_id).collect()
        };
        for _ in 0..MAX_REAP_ROUNDS {
            let mut inv = SCRIPTS.reap.prepare_invoke();
            inv.key(k.leases()).key(k.delay()).key(k.dead_letters());
            for p in Priority::ORDER {
                inv.key(k.class_stream(p));
            }
            inv.arg(k.prefix())
                .arg(now)
                .arg(WORKER_GROUP)
                .arg(batch)
                .arg(MAX_CRASHES)
                .arg(self.retention_s())
                .arg(self.maxlen())
                .arg(CONSUMER_IDLE_MS);
            let reply = self.run(&inv).await?;
            let parts = array(&reply)?;
            report.requeued.extend(ids(at(parts, 0)?)?);
            report.dead.extend(ids(at(parts, 1)?)?);
            report.canceled.extend(ids(at(parts, 2)?)?);
            report.promoted += usize::try_from(int(at(parts, 3)?)?).unwrap_or(0);
            let expired_seen = usize::try_from(int(at(parts, 4)?)?).unwrap_or(0);
            let due_seen = usize::try_from(int(at(parts, 5)?)?).unwrap_or(0);
            if expired_seen < batch && due_seen < batch {
                break;
            }
        }
        Ok(report)
    }

    async fn events(
        &self,
        id: JobId,
        after: Option<&str>,
        wait: Duration,
    ) -> Result<Vec<(String, JobEvent)>, QueueError> {
        self.read_events(id, after, wait).await
    }

    async fn stats(&self, now: Millis) -> Result<QueueStats, QueueError> {
        self.read_stats(now).await
    }

    async fn register_worker(
        &self,
        info: &WorkerInfo,
        ttl: Duration,
        now: Millis,
    ) -> Result<Beat, QueueError> {
        self.register_worker_impl(info, ttl, now).await
    }

    async fn request_drain(
        &self,
        worker: &str,
        actor: &str,
        now: Millis,
    ) -> Result<DrainOutcome, QueueError> {
        self.request_drain_impl(worker, actor, now).await
    }

    async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, QueueError> {
        self.audit_log_impl(limit).await
    }

    async fn admin_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<AdminJobPage, QueueError> {
        self.admin_jobs_impl(filter, cursor, limit).await
    }

    async fn job_history(&self, id: JobId) -> Result<Option<JobHistory>, QueueError> {
        self.job_history_impl(id).await
    }

    async fn throughput(&self, now: Millis) -> Result<Vec<MinuteCounts>, QueueError> {
        self.throughput_impl(now).await
    }

    async fn bulk_dead(
        &self,
        action: BulkAction,
        filter: &DeadFilter,
        cursor: Option<&str>,
        actor: &str,
        now: Millis,
    ) -> Result<BulkOutcome, QueueError> {
        self.bulk_dead_impl(action, filter, cursor, actor, now)
            .await
    }

    async fn cancel_queued(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        actor: &str,
        now: Millis,
    ) -> Result<CancelQueuedOutcome, QueueError> {
        self.cancel_queued_impl(tenant, cursor, actor, now).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.dead_letters_impl(limit).await
    }

    async fn requeue_dead(
        &self,
        id: JobId,
        new_id: JobId,
        actor: &str,
        now: Millis,
    ) -> Result<RequeueOutcome, QueueError> {
        self.requeue_dead_impl(id, new_id, actor, now).await
    }

    async fn dismiss_dead(
        &self,
        id: JobId,
        actor: &str,
        now: Millis,
    ) -> Result<DismissOutcome, QueueError> {
        self.dismiss_dead_impl(id, actor, now).await
    }

    async fn workers(&self, now: Millis) -> Result<Vec<WorkerInfo>, QueueError> {
        self.workers_impl(now).await
    }

    async fn usage(&self, from_day: u32, to_day: u32) -> Result<Vec<UsageRow>, QueueError> {
        self.usage_impl(from_day, to_day).await
    }

    async fn take_notifications(
        &self,
        now: Millis,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Notification>, QueueError> {
        self.take_notifications_impl(now, lease, limit).await
    }

    async fn ack_notifications(&self, ids: &[JobId]) -> Result<(), QueueError> {
        self.ack_notifications_impl(ids).await
    }

    async fn defer_notification(&self, id: JobId, at: Millis) -> Result<(), QueueError> {
        self.reschedule_notification(id, at, true).await
    }

    async fn retry_notification(&self, id: JobId, at: Millis) -> Result<(), QueueError> {
        self.reschedule_notification(id, at, false).await
    }

    async fn create_chain(&self, chain: ChainSubmission, now: Millis) -> Result<(), QueueError> {
        self.create_chain_impl(chain, now).await
    }

    async fn get_chain(&self, id: ChainId) -> Result<Option<ChainRecord>, QueueError> {
        self.get_chain_impl(id).await
    }

    async fn append_turn(
        &self,
        id: ChainId,
        turn: TurnAppend,
        now: Millis,
    ) -> Result<AppendOutcome, QueueError> {
        self.append_turn_impl(id, turn, now).await
    }

    async fn fork_chain(
        &self,
        id: ChainId,
        fork: ChainFork,
        now: Millis,
    ) -> Result<(), QueueError> {
        self.fork_chain_impl(id, fork, now).await
    }

    async fn cancel_chain(&self, id: ChainId, now: Millis) -> Result<CancelOutcome, QueueError> {
        self.cancel_chain_impl(id, now).await
    }
}
